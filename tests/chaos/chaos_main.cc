// boxmeter-chaos: the randomized fault run (see chaos_run.h).
//
//   boxmeter-chaos [--seconds N | --minutes N] [--seed S] [--collector BIN]
//                  [--exactly-once-faults on|off]
//
// The seed is printed first; --seed replays the same decisions. Without
// --seed: $BOXMETER_CHAOS_SEED, else a random one. Exit 0 when every total
// in the database equals v2ray-core's counters at the end, 1 otherwise.
// Needs postgresql-15, v2ray and curl (as the end-to-end tests do).
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <random>
#include <string>

#include "chaos_run.h"

namespace {

int Usage(const std::string& problem) {
  std::cerr << "boxmeter-chaos: " << problem
            << "\nusage: boxmeter-chaos [--seconds N | --minutes N] "
               "[--seed S] [--collector BIN] [--exactly-once-faults on|off]\n";
  return 64;
}

}  // namespace

int main(int argc, char** argv) {
  using boxmeter::testing::ChaosOptions;
  ChaosOptions options;
  options.collector_binary = BOXMETER_COLLECTOR_BIN;
  options.out = &std::cout;
  bool seeded = false;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string flag = argv[i];
      if (i + 1 >= argc) return Usage(flag + " needs a value");
      std::string value = argv[++i];
      if (flag == "--seconds") {
        options.duration = std::chrono::seconds(std::stoll(value));
      } else if (flag == "--minutes") {
        options.duration = std::chrono::seconds(60 * std::stoll(value));
      } else if (flag == "--seed") {
        options.seed = std::stoull(value);
        seeded = true;
      } else if (flag == "--collector") {
        options.collector_binary = value;
      } else if (flag == "--exactly-once-faults") {
        if (value != "on" && value != "off") {
          return Usage("--exactly-once-faults takes on or off, not " + value);
        }
        options.exactly_once_faults = value == "on";
      } else {
        return Usage("unknown flag " + flag);
      }
    }
  } catch (const std::exception&) {
    return Usage("a number was expected");
  }
  if (!seeded) {
    const char* env = std::getenv("BOXMETER_CHAOS_SEED");
    if (env && *env) {
      options.seed = std::stoull(env);
    } else {
      std::random_device device;
      options.seed = (uint64_t{device()} << 32) | device();
    }
  }
  std::cout << "boxmeter-chaos: seed " << options.seed
            << " (replay: scripts/chaos.sh --seed " << options.seed
            << " --seconds " << options.duration.count()
            << (options.exactly_once_faults ? " --exactly-once-faults on" : "")
            << ")" << std::endl;

  boxmeter::testing::ChaosReport report = boxmeter::testing::RunChaos(options);

  // The logs first, so that the verdict is the last thing printed (CI
  // shows a run's head and tail).
  if (!report.ok) std::cout << report.context << "\n";
  std::cout << "\n=== chaos summary (seed " << options.seed << ", "
            << report.elapsed.count() << "s)\n"
            << "events survived: " << report.total_events << "\n";
  for (const auto& [kind, count] : report.events) {
    std::cout << "  " << count << "  " << kind << "\n";
  }
  std::cout << "exact matches with v2ray-core: " << report.exact_matches
            << "; never-more-than checks: " << report.bound_checks << "\n"
            << "payload pushed through v2ray-core: " << report.bytes_pushed
            << " bytes\n";
  if (!report.ok) {
    std::cout << "FAILED: " << report.failure << "\n"
              << "replay: scripts/chaos.sh --seed " << options.seed
              << " --seconds " << options.duration.count()
              << (options.exactly_once_faults ? " --exactly-once-faults on"
                                              : "")
              << std::endl;
    return 1;
  }
  std::cout << "final comparison: " << report.counters_compared << " counters, "
            << report.bytes_compared
            << " bytes, database == v2ray-core exactly\nPASSED" << std::endl;
  return 0;
}
