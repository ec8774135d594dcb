// boxmeter-gen: writes sing-box's config from the base template and the
// inbounds and users in PostgreSQL, so that the users sing-box accepts and
// the users it counts are always the same set.
//
//   config -> template -> database rows -> generate -> write (or print/check)
//
// Every step can fail with its own exit status, and nothing is written
// unless every step before the write succeeded.
#include <sys/stat.h>
#include <sysexits.h>

#include <cstdio>
#include <string>
#include <vector>

#include "atomic_file.h"
#include "command_line.h"
#include "config.h"
#include "config_generator.h"
#include "pg_inventory.h"
#include "program.h"

namespace boxmeter {
namespace {

constexpr int kWouldChange = 1;  // --check: the file is not up to date

const std::vector<FlagSpec> kFlags = ProgramFlags({
    {"stdout", false, "print the config instead of writing generator.output"},
    {"check", false,
     "write nothing; exit 0 if generator.output is up to date, 1 if not"},
});

std::string Usage() {
  return "Usage: boxmeter-gen [options]\n"
         "\n"
         "Writes sing-box's config: the template (generator.template) with\n"
         "this node's enabled inbounds from PostgreSQL added, each with its\n"
         "users that are enabled, not expired and under quota, and the\n"
         "experimental.v2ray_api block that makes sing-box count exactly\n"
         "those inbounds and users (plus generator.stats_outbounds). The\n"
         "file (generator.output) is replaced atomically, with mode 0600\n"
         "(0640 in a set-group-ID directory: readable by its group).\n"
         "The same database gives the same bytes. On any error, nothing is\n"
         "written. An inbound none of whose users is eligible is left out\n"
         "(one line on stderr says so), never written without users.\n"
         "\n"
         "Options:\n" +
         FormatFlags(kFlags) +
         "\n"
         "Environment:\n"
         "  BOXMETER_CONFIG        the config file, unless --config is given\n"
         "  BOXMETER_GENERATOR_DATABASE_URL, "
         "BOXMETER_GENERATOR_DATABASE_URL_FILE\n"
         "                         override generator.database_url(_file), "
         "the\n"
         "                         login used here when set\n"
         "  BOXMETER_DATABASE_URL, BOXMETER_DATABASE_URL_FILE\n"
         "                         override database.url(_file), used "
         "otherwise\n"
         "  CREDENTIALS_DIRECTORY  where a relative *_file path is looked up\n"
         "  PG* and ~/.pgpass      as libpq reads them\n"
         "\n"
         "Exit status:\n"
         "  0   written (or printed); with --check: already up to date\n"
         "  1   --check: the file would change (or does not exist)\n"
         "  64  bad command line\n"
         "  65  bad data: an inbound or user row (e.g. a vless user without\n"
         "      uuid, an unknown inbound type, a tag also in the template,\n"
         "      TLS without a certificate, two users of one inbound with the\n"
         "      same credential), or a template that is not a JSON object;\n"
         "      all of them are reported at once, each named\n"
         "  66  the template (or, with --check, the output) cannot be read\n"
         "  69  the database cannot be reached or read\n"
         "  73  the output cannot be written\n"
         "  78  the config file is missing or invalid\n"
         "\n"
         "As hooks.on_users_changed (the collector runs it when users cross\n"
         "their quota or change): boxmeter-gen && systemctl reload sing-box\n";
}

// 0600, or 0640 in a set-group-ID directory: there the directory's group
// (e.g. sing-box's, when the generator runs as its own user) is the group
// the file gets and the one meant to read it. Anywhere else the config's
// credentials stay with the generator's user.
mode_t OutputMode(const std::string& output) {
  std::string dir = output.substr(0, output.find_last_of('/') + 1);
  struct stat st;
  if (dir.empty()) dir = ".";
  if (stat(dir.c_str(), &st) == 0 && (st.st_mode & S_ISGID) != 0) return 0640;
  return 0600;
}

void Error(const std::string& message) {
  std::fprintf(stderr, "boxmeter-gen: %s\n", message.c_str());
}

int Main(int argc, char** argv) {
  const ProgramInfo program{"boxmeter-gen", kFlags, Usage(),
                            ConfigUser::kGenerator};
  CommandLine cli;
  if (std::optional<int> done = StartProgram(program, argc, argv, &cli)) {
    return *done;
  }
  if (cli.Has("stdout") && cli.Has("check")) {
    Error("--stdout and --check exclude each other; give one (see --help)");
    return EX_USAGE;
  }

  Config config;
  if (!LoadConfigOrReport(program, cli,
                          "fix them and run again; nothing written", &config)) {
    return EX_CONFIG;
  }

  GeneratorInput input;
  input.template_name = config.generator.template_path;
  if (Status status =
          ReadWholeFile(config.generator.template_path, &input.template_json);
      !status.ok()) {
    Error("cannot read the template (generator.template in " + config.path +
          "): " + status.message() + "; nothing written");
    return EX_NOINPUT;
  }

  Inventory inventory;
  if (Status status = PgInventory(GeneratorDatabaseUrl(config))
                          .Read(config.node, &inventory);
      !status.ok()) {
    Error(status.message() + "; nothing written");
    return EX_UNAVAILABLE;
  }
  if (inventory.inbounds.empty()) {
    Error("warning: node '" + config.node +
          "' has no enabled inbounds in the database (table inbounds); "
          "the config has only the template's inbounds. Is node: in " +
          config.path + " the name used in inbounds.node?");
  }
  input.inbounds = std::move(inventory.inbounds);
  input.users = std::move(inventory.users);
  input.links = std::move(inventory.links);
  input.stats_listen = config.source.address;
  input.stats_outbounds = config.generator.stats_outbounds;

  GeneratedConfig generated = GenerateSingBoxConfig(input);
  if (!generated.ok()) {
    for (const std::string& e : generated.errors) Error(e);
    Error(std::to_string(generated.errors.size()) +
          " problem(s) in the database rows of node '" + config.node +
          "' or in the template; fix them and run again; nothing written");
    return EX_DATAERR;
  }
  // Not an error: the inbound is safe out of the config and comes back by
  // itself, but whoever reads the hook's output should see why it went.
  for (const std::string& line : generated.left_out) Error(line);

  if (cli.Has("stdout")) {
    std::fwrite(generated.text.data(), 1, generated.text.size(), stdout);
    return std::fflush(stdout) == 0 ? 0 : EX_IOERR;
  }

  const std::string& output = config.generator.output;
  std::string current;
  Status read = ReadWholeFile(output, &current);
  bool up_to_date = read.ok() && current == generated.text;
  if (cli.Has("check")) {
    if (!read.ok() && read.code() != Status::Code::kInvalid) {
      Error(read.message() + " (generator.output)");
      return EX_NOINPUT;
    }
    std::fprintf(stderr, "boxmeter-gen: %s %s\n", output.c_str(),
                 up_to_date ? "is up to date" : "would change");
    return up_to_date ? 0 : kWouldChange;
  }

  if (Status status =
          WriteFileAtomically(output, generated.text, OutputMode(output));
      !status.ok()) {
    Error(status.message() + " (generator.output in " + config.path + ")");
    return EX_CANTCREAT;
  }
  std::fprintf(stderr,
               "boxmeter-gen: wrote %s: %zu inbound(s), %zu user(s)%s\n",
               output.c_str(), generated.inbounds, generated.users,
               up_to_date ? " (unchanged)" : "");
  return 0;
}

}  // namespace
}  // namespace boxmeter

int main(int argc, char** argv) { return boxmeter::Main(argc, argv); }
