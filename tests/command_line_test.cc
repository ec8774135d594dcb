#include "command_line.h"

#include <gtest/gtest.h>

namespace boxmeter {
namespace {

const std::vector<FlagSpec> kSpecs = {
    {"config", true, "the config file", "FILE"},
    {"once", false, "poll once"},
};

bool Parse(std::vector<const char*> args, CommandLine* cli,
           std::string* error) {
  args.insert(args.begin(), "prog");
  return cli->Parse(kSpecs, static_cast<int>(args.size()), args.data(), error);
}

TEST(CommandLineTest, AcceptsSwitchesAndBothValueForms) {
  for (auto args : {std::vector<const char*>{"--config", "/x.yaml", "--once"},
                    std::vector<const char*>{"--once", "--config=/x.yaml"}}) {
    CommandLine cli;
    std::string error;
    ASSERT_TRUE(Parse(args, &cli, &error)) << error;
    EXPECT_TRUE(cli.Has("once"));
    EXPECT_EQ(cli.Value("config"), "/x.yaml");
  }
}

TEST(CommandLineTest, AbsentFlagsHaveNoValue) {
  CommandLine cli;
  std::string error;
  ASSERT_TRUE(Parse({}, &cli, &error));
  EXPECT_FALSE(cli.Has("once"));
  EXPECT_EQ(cli.Value("config"), std::nullopt);
}

TEST(CommandLineTest, RejectsWithAMessageNamingTheArgument) {
  struct Case {
    std::vector<const char*> args;
    std::string message;
  } cases[] = {
      {{"--verbose"}, "unknown option \"--verbose\""},
      {{"--config"}, "option --config needs a value: --config FILE"},
      {{"--once=yes"}, "option --once takes no value (got \"yes\")"},
      {{"--once", "--once"}, "option --once is given twice"},
      {{"config.yaml"}, "unexpected argument \"config.yaml\""},
      {{"-c"}, "unexpected argument \"-c\""},
      {{"--"}, "unexpected argument \"--\""},
  };
  for (const Case& c : cases) {
    CommandLine cli;
    std::string error;
    EXPECT_FALSE(Parse(c.args, &cli, &error)) << c.message;
    EXPECT_NE(error.find(c.message), std::string::npos)
        << "got: " << error << "\nwant: " << c.message;
  }
}

TEST(CommandLineTest, FormatFlagsAlignsTheHelp) {
  EXPECT_EQ(FormatFlags(kSpecs),
            "  --config FILE  the config file\n"
            "  --once         poll once\n");
}

}  // namespace
}  // namespace boxmeter
