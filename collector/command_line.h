// CommandLine: the flags of boxmeter's binaries. Both binaries declare their
// flags in a table and share this parser, so they accept the same forms:
// "--flag", "--flag value" and "--flag=value".
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace boxmeter {

struct FlagSpec {
  std::string name;  // without the leading "--"
  bool takes_value = false;
  std::string help;  // one line for --help
  std::string value_name = "VALUE";
};

class CommandLine {
 public:
  // Parses argv[1..]. Returns false with a message naming the offending
  // argument for an unknown flag, a missing value, a value given to a switch,
  // a repeated flag or a positional argument.
  bool Parse(const std::vector<FlagSpec>& specs, int argc,
             const char* const* argv, std::string* error);

  bool Has(const std::string& name) const { return flags_.count(name) > 0; }
  std::optional<std::string> Value(const std::string& name) const;

 private:
  std::map<std::string, std::string> flags_;
};

// The "Options:" block of --help, one aligned line per flag.
std::string FormatFlags(const std::vector<FlagSpec>& specs);

}  // namespace boxmeter
