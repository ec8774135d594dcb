#include "program.h"

#include <sys/prctl.h>
#include <sysexits.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace boxmeter {

const char* BoxmeterVersion() { return BOXMETER_VERSION; }

std::vector<FlagSpec> ProgramFlags(std::vector<FlagSpec> own) {
  std::vector<FlagSpec> flags = {
      {"config", true,
       "the config file (default: $BOXMETER_CONFIG, else " +
           std::string(kDefaultConfigPath) + ")",
       "FILE"}};
  flags.insert(flags.end(), own.begin(), own.end());
  flags.push_back({"version", false, "print the version and exit"});
  flags.push_back({"help", false, "print this help and exit"});
  return flags;
}

std::optional<int> StartProgram(const ProgramInfo& program, int argc,
                                const char* const* argv, CommandLine* cli) {
  // The database password is in this process's memory, and may be in its
  // environment. Non-dumpable, /proc/PID/environ, mem and the like are
  // closed to every other process of the same uid (sing-box in a shared
  // PID namespace, say), ptrace is refused, and no core is written.
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
    std::fprintf(stderr,
                 "%s: warning: cannot make the process non-dumpable (%s); "
                 "other processes of this user may read its environment\n",
                 program.name.c_str(), std::strerror(errno));
  }
  std::string error;
  if (!cli->Parse(program.flags, argc, argv, &error)) {
    std::fprintf(stderr, "%s: %s\n", program.name.c_str(), error.c_str());
    return EX_USAGE;
  }
  if (cli->Has("help")) {
    std::fputs(program.usage.c_str(), stdout);
    return 0;
  }
  if (cli->Has("version")) {
    std::printf("%s %s\n", program.name.c_str(), BoxmeterVersion());
    return 0;
  }
  return std::nullopt;
}

bool LoadConfigOrReport(const ProgramInfo& program, const CommandLine& cli,
                        const std::string& advice, Config* config) {
  Environment env = ProcessEnvironment();
  std::string path = ConfigPath(cli.Value("config"), env);
  std::vector<std::string> errors;
  if (LoadConfig(path, env, config, &errors, program.config_user)) {
    return true;
  }
  for (const std::string& error : errors) {
    std::fprintf(stderr, "%s: %s\n", program.name.c_str(), error.c_str());
  }
  std::fprintf(stderr, "%s: %zu problem(s) in %s; %s\n", program.name.c_str(),
               errors.size(), path.c_str(), advice.c_str());
  return false;
}

}  // namespace boxmeter
