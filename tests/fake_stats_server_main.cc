// fake-stats-server: FakeStatsServer as a process, for benchmarks and for
// end-to-end tests that drive other binaries (the collector) against it.
//
//   fake-stats-server [--listen HOST:PORT] [--counters N]
//
// Prints "listening HOST:PORT" (the chosen port when PORT is 0) as its first
// line, then reads one command per line on stdin and answers each with "ok"
// or "error <why>":
//
//   set NAME VALUE        add NAME DELTA        restart
//   delay MS              fail CODE|none        populate N
//   touch FRACTION BYTES  uptime SECONDS        duplicate on|off
//   users N               traffic ACTIVE BYTES  dump PATH
//   quit
//
// CODE is a gRPC status name (UNIMPLEMENTED) or number (12). NAME may contain
// spaces: the number is the last word. End of input is quit.
//
// A node's traffic, for scripts/fleet.sh: `users N` makes users u000000 to
// u(N-1) exist at 0 with one inbound and one outbound, as sing-box shows
// them once each has connected; `traffic ACTIVE BYTES` gives the next ACTIVE
// of them (in turn, wrapping) BYTES up and 4*BYTES down, and the inbound and
// the outbound the same sums. `dump PATH` writes every counter as
// "NAME<TAB>VALUE" lines to PATH, for comparing with the database.
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "fake_stats_server.h"

namespace {

using boxmeter::testing::FakeStatsServer;

constexpr const char* kUsage =
    "usage: fake-stats-server [--listen HOST:PORT] [--counters N]\n";

template <typename Number>
bool ParseNumber(std::string_view text, Number* out) {
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, *out);
  return ec == std::errc() && ptr == end && !text.empty();
}

bool ParseStatusCode(std::string_view text, grpc::StatusCode* out) {
  static constexpr std::pair<std::string_view, grpc::StatusCode> kNames[] = {
      {"OK", grpc::StatusCode::OK},
      {"CANCELLED", grpc::StatusCode::CANCELLED},
      {"UNKNOWN", grpc::StatusCode::UNKNOWN},
      {"INVALID_ARGUMENT", grpc::StatusCode::INVALID_ARGUMENT},
      {"DEADLINE_EXCEEDED", grpc::StatusCode::DEADLINE_EXCEEDED},
      {"NOT_FOUND", grpc::StatusCode::NOT_FOUND},
      {"ALREADY_EXISTS", grpc::StatusCode::ALREADY_EXISTS},
      {"PERMISSION_DENIED", grpc::StatusCode::PERMISSION_DENIED},
      {"RESOURCE_EXHAUSTED", grpc::StatusCode::RESOURCE_EXHAUSTED},
      {"FAILED_PRECONDITION", grpc::StatusCode::FAILED_PRECONDITION},
      {"ABORTED", grpc::StatusCode::ABORTED},
      {"OUT_OF_RANGE", grpc::StatusCode::OUT_OF_RANGE},
      {"UNIMPLEMENTED", grpc::StatusCode::UNIMPLEMENTED},
      {"INTERNAL", grpc::StatusCode::INTERNAL},
      {"UNAVAILABLE", grpc::StatusCode::UNAVAILABLE},
      {"DATA_LOSS", grpc::StatusCode::DATA_LOSS},
      {"UNAUTHENTICATED", grpc::StatusCode::UNAUTHENTICATED},
  };
  for (const auto& [name, code] : kNames) {
    if (text == name) {
      *out = code;
      return true;
    }
  }
  int number = 0;
  if (ParseNumber(text, &number) && number >= 0 && number <= 16) {
    *out = static_cast<grpc::StatusCode>(number);
    return true;
  }
  return false;
}

// Splits "NAME WITH SPACES 123" into the name and the last word.
bool SplitNameAndNumber(std::string_view args, std::string* name,
                        std::string_view* number) {
  size_t space = args.rfind(' ');
  if (space == std::string_view::npos || space == 0) return false;
  *name = std::string(args.substr(0, space));
  *number = args.substr(space + 1);
  return true;
}

// The users `users N` made, and the next one `traffic` starts at.
struct NodeTraffic {
  size_t users = 0;
  size_t next = 0;
};

constexpr const char* kInbound = "inbound>>>vless-in>>>traffic>>>";
constexpr const char* kOutbound = "outbound>>>direct>>>traffic>>>";

std::string UserCounter(size_t user, const char* direction) {
  char name[64];
  std::snprintf(name, sizeof name, "user>>>u%06zu>>>traffic>>>%s", user,
                direction);
  return name;
}

void MakeUsers(FakeStatsServer& server, NodeTraffic& node, size_t users) {
  for (const char* direction : {"uplink", "downlink"}) {
    server.Add(std::string(kInbound) + direction, 0);
    server.Add(std::string(kOutbound) + direction, 0);
  }
  for (size_t user = 0; user < users; ++user) {
    server.Add(UserCounter(user, "uplink"), 0);
    server.Add(UserCounter(user, "downlink"), 0);
  }
  node.users = std::max(node.users, users);
}

void AddTraffic(FakeStatsServer& server, NodeTraffic& node, size_t active,
                int64_t bytes) {
  active = std::min(active, node.users);
  for (size_t i = 0; i < active; ++i) {
    size_t user = node.next++ % node.users;
    server.Add(UserCounter(user, "uplink"), bytes);
    server.Add(UserCounter(user, "downlink"), 4 * bytes);
  }
  int64_t up = bytes * static_cast<int64_t>(active);
  server.Add(std::string(kInbound) + "uplink", up);
  server.Add(std::string(kInbound) + "downlink", 4 * up);
  server.Add(std::string(kOutbound) + "uplink", up);
  server.Add(std::string(kOutbound) + "downlink", 4 * up);
}

std::string Dump(const FakeStatsServer& server, const std::string& path) {
  std::ofstream out(path, std::ios::trunc);
  for (const auto& [name, value] : server.Counters()) {
    out << name << '\t' << value << '\n';
  }
  out.close();
  if (!out) return "cannot write " + path + ": check the directory exists";
  return "";
}

// Runs one command. Returns "" for ok, or why it failed.
std::string Run(FakeStatsServer& server, NodeTraffic& node,
                std::string_view line, bool* quit) {
  size_t space = line.find(' ');
  std::string_view command = line.substr(0, space);
  std::string_view args =
      space == std::string_view::npos ? "" : line.substr(space + 1);
  std::string name;
  std::string_view word;
  if (command == "set" || command == "add") {
    int64_t value = 0;
    if (!SplitNameAndNumber(args, &name, &word) || !ParseNumber(word, &value)) {
      return std::string(command) + " wants NAME and an integer";
    }
    command == "set" ? server.Set(name, value) : server.Add(name, value);
  } else if (command == "restart") {
    server.Restart();
  } else if (command == "delay") {
    int64_t ms = 0;
    if (!ParseNumber(args, &ms) || ms < 0) {
      return "delay wants milliseconds, a whole number >= 0";
    }
    server.SetDelay(std::chrono::milliseconds(ms));
  } else if (command == "fail") {
    grpc::StatusCode code = grpc::StatusCode::OK;
    if (args != "none" && !ParseStatusCode(args, &code)) {
      return "fail wants a gRPC status name (UNIMPLEMENTED), number, or none";
    }
    server.SetFailure(code);
  } else if (command == "populate") {
    size_t count = 0;
    if (!ParseNumber(args, &count)) return "populate wants a counter count";
    server.Populate(count);
  } else if (command == "touch") {
    std::istringstream in{std::string(args)};
    double fraction = 0;
    int64_t bytes = 0;
    std::string rest;
    if (!(in >> fraction >> bytes) || (in >> rest) || fraction < 0 ||
        fraction > 1) {
      return "touch wants FRACTION (0 to 1) and BYTES";
    }
    server.TouchFraction(fraction, bytes);
  } else if (command == "uptime") {
    int64_t seconds = 0;
    if (!ParseNumber(args, &seconds) || seconds < 0) {
      return "uptime wants seconds, a whole number >= 0";
    }
    server.SetUptimeOffset(std::chrono::seconds(seconds));
  } else if (command == "duplicate") {
    if (args != "on" && args != "off") return "duplicate wants on or off";
    server.SetDuplicateEverything(args == "on");
  } else if (command == "users") {
    size_t users = 0;
    if (!ParseNumber(args, &users)) return "users wants a user count";
    MakeUsers(server, node, users);
  } else if (command == "traffic") {
    std::istringstream in{std::string(args)};
    size_t active = 0;
    int64_t bytes = 0;
    std::string rest;
    if (!(in >> active >> bytes) || (in >> rest) || bytes < 0) {
      return "traffic wants ACTIVE (a user count) and BYTES (>= 0)";
    }
    if (node.users == 0 && active > 0) return "traffic wants `users N` first";
    AddTraffic(server, node, active, bytes);
  } else if (command == "dump") {
    if (args.empty()) return "dump wants a file path";
    return Dump(server, std::string(args));
  } else if (command == "quit") {
    *quit = true;
  } else {
    return "unknown command '" + std::string(command) + "'";
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:0";
  size_t counters = 0;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if ((arg == "--listen" || arg == "--counters") && i + 1 < argc) {
      std::string_view value = argv[++i];
      if (arg == "--listen") {
        listen = value;
      } else if (!ParseNumber(value, &counters)) {
        std::cerr << "fake-stats-server: --counters wants a number, not '"
                  << value << "'\n";
        return 64;
      }
      continue;
    }
    std::cerr << "fake-stats-server: unexpected argument '" << arg << "'\n"
              << kUsage;
    return 64;
  }
  size_t colon = listen.rfind(':');
  int port = 0;
  if (colon == std::string::npos ||
      !ParseNumber(std::string_view(listen).substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    std::cerr << "fake-stats-server: --listen wants HOST:PORT, not '" << listen
              << "'\n";
    return 64;
  }

  std::unique_ptr<FakeStatsServer> server;
  try {
    server = std::make_unique<FakeStatsServer>(port, listen.substr(0, colon));
  } catch (const std::exception& e) {
    std::cerr << "fake-stats-server: " << e.what() << "\n";
    return 69;  // EX_UNAVAILABLE
  }
  server->Populate(counters);
  std::cout << "listening " << server->address() << std::endl;

  std::string line;
  NodeTraffic node;
  bool quit = false;
  while (!quit && std::getline(std::cin, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    std::string error = Run(*server, node, line, &quit);
    std::cout << (error.empty() ? "ok" : "error " + error) << std::endl;
  }
  server->Shutdown();
  return 0;
}
