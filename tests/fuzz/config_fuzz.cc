// Fuzzes LoadConfig with the input as the config file's bytes. Properties,
// beyond "no crash, no UB, no exception":
//   - it succeeds exactly when it reports no problem;
//   - a loaded config has what the contract promises: a source address, a
//     database URL, a poll interval of at least 100ms, positive timeouts;
//   - no message repeats the password of a database URL written in the file.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "config.h"
#include "fuzz_check.h"

namespace {

// One file, rewritten for each input, removed at exit.
const std::string& ConfigFile() {
  static const std::string* path = [] {
    const char* tmp = getenv("TMPDIR");
    std::string pattern =
        std::string(tmp && *tmp ? tmp : "/tmp") + "/boxmeter-fuzz-XXXXXX";
    if (!mkdtemp(pattern.data())) std::abort();
    auto* file = new std::string(pattern + "/boxmeter.yaml");
    static std::string dir = pattern;
    std::atexit([] {
      unlink((dir + "/boxmeter.yaml").c_str());
      rmdir(dir.c_str());
    });
    return file;
  }();
  return *path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace boxmeter;
  {
    std::ofstream file(ConfigFile(), std::ios::binary | std::ios::trunc);
    file.write(reinterpret_cast<const char*>(data),
               static_cast<std::streamsize>(size));
  }
  Config config;
  std::vector<std::string> errors;
  bool ok = LoadConfig(ConfigFile(), Environment{}, &config, &errors);
  FUZZ_CHECK(ok == errors.empty());
  if (ok) {
    FUZZ_CHECK(!config.source.address.empty());
    FUZZ_CHECK(!config.database.url.empty());
    FUZZ_CHECK(config.poll.interval >= std::chrono::milliseconds(100));
    FUZZ_CHECK(config.source.timeout.count() > 0);
    FUZZ_CHECK(config.source.max_message_size > 0);
    for (const std::string& warning : ConfigWarnings(config, Environment{})) {
      FUZZ_CHECK(!warning.empty());
    }
  }
  // A password planted after the input must never be echoed: the input may
  // leave the file in any state, so the planted key may be valid, misplaced,
  // a duplicate or part of a string.
  static constexpr std::string_view kSecret = "Zq7-fuzz-secret-Wx";
  std::string planted(reinterpret_cast<const char*>(data), size);
  // libFuzzer learns constants from comparisons; an input that spells the
  // secret itself may see it quoted back, rightly.
  if (planted.find(kSecret.substr(0, 8)) != std::string::npos) return 0;
  planted += "\ndatabase:\n  url: postgresql://boxmeter:";
  planted += kSecret;
  planted += "@localhost/boxmeter\n";
  {
    std::ofstream file(ConfigFile(), std::ios::binary | std::ios::trunc);
    file << planted;
  }
  errors.clear();
  Config planted_config;
  if (LoadConfig(ConfigFile(), Environment{}, &planted_config, &errors)) {
    for (const std::string& warning :
         ConfigWarnings(planted_config, Environment{})) {
      FUZZ_CHECK(warning.find(kSecret) == std::string::npos);
    }
  }
  for (const std::string& error : errors) {
    FUZZ_CHECK(error.find(kSecret) == std::string::npos);
  }
  return 0;
}
