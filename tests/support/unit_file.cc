#include "unit_file.h"

#include <sstream>
#include <stdexcept>

#include "process.h"

namespace boxmeter::testing {
namespace {

std::string Trim(const std::string& text) {
  size_t begin = text.find_first_not_of(" \t\r");
  if (begin == std::string::npos) return "";
  size_t end = text.find_last_not_of(" \t\r");
  return text.substr(begin, end - begin + 1);
}

std::vector<std::string> SplitWords(const std::string& text) {
  std::vector<std::string> words;
  std::istringstream in(text);
  for (std::string word; in >> word;) words.push_back(word);
  return words;
}

}  // namespace

UnitFile UnitFile::Parse(const std::string& text) {
  UnitFile unit;
  std::string section;
  std::istringstream in(text);
  int number = 0;
  std::string line;
  while (std::getline(in, line)) {
    ++number;
    int first = number;
    std::string start = Trim(line);
    if (start.empty() || start[0] == '#' || start[0] == ';') continue;
    while (!line.empty() && line.back() == '\\') {
      line.pop_back();
      // Comment lines inside a continued line are skipped, as systemd does.
      std::string next;
      bool more = false;
      while (std::getline(in, next)) {
        ++number;
        std::string trimmed = Trim(next);
        if (!trimmed.empty() && (trimmed[0] == '#' || trimmed[0] == ';')) {
          continue;
        }
        more = true;
        break;
      }
      if (!more) break;
      line += " " + next;
    }
    std::string trimmed = Trim(line);
    if (trimmed.front() == '[' && trimmed.back() == ']') {
      section = trimmed.substr(1, trimmed.size() - 2);
      continue;
    }
    size_t equals = trimmed.find('=');
    if (equals == std::string::npos || section.empty()) {
      unit.errors_.push_back("line " + std::to_string(first) + ": " + trimmed);
      continue;
    }
    std::string key = Trim(trimmed.substr(0, equals));
    std::string value = Trim(trimmed.substr(equals + 1));
    unit.values_[{section, key}].push_back(value);
  }
  return unit;
}

UnitFile UnitFile::Read(const std::string& path) {
  std::string text = ReadFile(path);
  if (text.empty()) {
    throw std::runtime_error("cannot read the unit file " + path +
                             " (or it is empty)");
  }
  return Parse(text);
}

std::vector<std::string> UnitFile::Values(const std::string& section,
                                          const std::string& key) const {
  auto it = values_.find({section, key});
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

std::optional<std::string> UnitFile::Value(const std::string& section,
                                           const std::string& key) const {
  std::vector<std::string> values = Values(section, key);
  if (values.empty()) return std::nullopt;
  return values.back();
}

std::vector<std::string> UnitFile::Words(const std::string& section,
                                         const std::string& key) const {
  std::vector<std::string> words;
  for (const std::string& value : Values(section, key)) {
    for (std::string& word : SplitWords(value)) words.push_back(word);
  }
  return words;
}

}  // namespace boxmeter::testing
