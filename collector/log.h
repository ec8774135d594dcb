// Log: one line per event on stderr, with a level filter that can change at
// run time (SIGHUP). Safe to call from any thread: each line is written with a
// single write so lines from different threads never interleave.
#pragma once

#include <fmt/core.h>

#include <optional>
#include <string>
#include <string_view>

namespace boxmeter {

enum class LogLevel { kDebug, kInfo, kWarn, kError };

// "debug" | "info" | "warn" | "error"; nullopt for anything else.
std::optional<LogLevel> ParseLogLevel(std::string_view text);
std::string_view LogLevelName(LogLevel level);

void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);
void LogLine(LogLevel level, std::string_view message);

template <typename... Args>
void Log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
  if (LogEnabled(level)) {
    LogLine(level, fmt::format(format, std::forward<Args>(args)...));
  }
}

#define BOXMETER_LOG_FN(fn, level)                              \
  template <typename... Args>                                   \
  void fn(fmt::format_string<Args...> format, Args&&... args) { \
    Log(LogLevel::level, format, std::forward<Args>(args)...);  \
  }
BOXMETER_LOG_FN(LogDebug, kDebug)
BOXMETER_LOG_FN(LogInfo, kInfo)
BOXMETER_LOG_FN(LogWarn, kWarn)
BOXMETER_LOG_FN(LogError, kError)
#undef BOXMETER_LOG_FN

}  // namespace boxmeter
