// Program: the start both boxmeter binaries share: parse the command line,
// answer --help and --version, and load the config file reporting every
// problem, each message prefixed with the program's name.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "command_line.h"
#include "config.h"

namespace boxmeter {

struct ProgramInfo {
  std::string name;  // "boxmeter-collector", for messages and --version
  std::vector<FlagSpec> flags;
  std::string usage;                                // the whole --help text
  ConfigUser config_user = ConfigUser::kCollector;  // whose secrets to read
};

// This build's version (the project's, from CMake): --version and the
// collector's build_info metric.
const char* BoxmeterVersion();

// The flags of a boxmeter binary: --config FILE, then `own`, then --version
// and --help, which StartProgram answers.
std::vector<FlagSpec> ProgramFlags(std::vector<FlagSpec> own);

// Makes the process non-dumpable (PR_SET_DUMPABLE 0: its /proc/PID/environ,
// memory and core are closed to other processes of its uid), then parses
// argv into `cli` and answers --help and --version. Call it first in main.
// Returns the exit code when the program is done (0 after help or version,
// EX_USAGE with a message on stderr for a bad command line), nullopt to go on.
std::optional<int> StartProgram(const ProgramInfo& program, int argc,
                                const char* const* argv, CommandLine* cli);

// Loads the file named by --config, $BOXMETER_CONFIG or the default. On
// failure prints every problem and a last line ending with `advice`, and
// returns false: exit with EX_CONFIG.
bool LoadConfigOrReport(const ProgramInfo& program, const CommandLine& cli,
                        const std::string& advice, Config* config);

}  // namespace boxmeter
