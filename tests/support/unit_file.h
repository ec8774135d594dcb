// Test support: a systemd unit file, parsed well enough to check what the
// deploy tests promise (which binary ExecStart= runs, which path a .path unit
// watches, which hardening settings a service has).
//
// The syntax of systemd.syntax(7): [Section] headers, Key=Value lines,
// comments starting with '#' or ';', and a trailing backslash continuing a
// line. Every assignment is kept in order: keys such as ExecStart= or
// SystemCallFilter= may repeat, and an empty assignment
// (CapabilityBoundingSet=) is kept as "". Values are not unquoted or expanded.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace boxmeter::testing {

class UnitFile {
 public:
  // Parses `text`; lines that are neither a section, an assignment, a
  // comment nor blank are collected in errors().
  static UnitFile Parse(const std::string& text);
  // Reads and parses the file; throws std::runtime_error if it is unreadable.
  static UnitFile Read(const std::string& path);

  // Every value assigned to `key` in `section`, in order.
  std::vector<std::string> Values(const std::string& section,
                                  const std::string& key) const;
  // The last value assigned, or nullopt if none.
  std::optional<std::string> Value(const std::string& section,
                                   const std::string& key) const;
  // The values, each split at whitespace, concatenated: for list settings
  // such as After= or RestrictAddressFamilies=.
  std::vector<std::string> Words(const std::string& section,
                                 const std::string& key) const;

  const std::vector<std::string>& errors() const { return errors_; }

 private:
  // (section, key) -> values in order.
  std::map<std::pair<std::string, std::string>, std::vector<std::string>>
      values_;
  std::vector<std::string> errors_;
};

}  // namespace boxmeter::testing
