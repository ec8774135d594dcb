#include "command_line.h"

#include <fmt/core.h>

#include <algorithm>

namespace boxmeter {

bool CommandLine::Parse(const std::vector<FlagSpec>& specs, int argc,
                        const char* const* argv, std::string* error) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
      *error = fmt::format(
          "unexpected argument \"{}\"; every option starts with --, see "
          "--help",
          arg);
      return false;
    }
    std::string name = arg.substr(2);
    std::optional<std::string> inline_value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    auto spec = std::find_if(specs.begin(), specs.end(),
                             [&](const FlagSpec& s) { return s.name == name; });
    if (spec == specs.end()) {
      *error = fmt::format("unknown option \"--{}\"; see --help", name);
      return false;
    }
    if (flags_.count(name)) {
      *error = fmt::format("option --{} is given twice", name);
      return false;
    }
    std::string value;
    if (spec->takes_value) {
      if (inline_value) {
        value = *inline_value;
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        *error = fmt::format("option --{} needs a value: --{} {}", name, name,
                             spec->value_name);
        return false;
      }
    } else if (inline_value) {
      *error = fmt::format("option --{} takes no value (got \"{}\")", name,
                           *inline_value);
      return false;
    }
    flags_[name] = value;
  }
  return true;
}

std::optional<std::string> CommandLine::Value(const std::string& name) const {
  auto it = flags_.find(name);
  if (it == flags_.end()) return std::nullopt;
  return it->second;
}

std::string FormatFlags(const std::vector<FlagSpec>& specs) {
  std::vector<std::string> left;
  size_t width = 0;
  for (const FlagSpec& spec : specs) {
    left.push_back("--" + spec.name +
                   (spec.takes_value ? " " + spec.value_name : ""));
    width = std::max(width, left.back().size());
  }
  std::string out;
  for (size_t i = 0; i < specs.size(); ++i) {
    out += fmt::format("  {:<{}}  {}\n", left[i], width, specs[i].help);
  }
  return out;
}

}  // namespace boxmeter
