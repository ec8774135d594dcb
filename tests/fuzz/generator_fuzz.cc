// Fuzzes boxmeter-gen's core with an arbitrary template and arbitrary row
// values (tags, user names, passwords, options): what an operator or a
// compromised database row could feed it. Properties, beyond "no crash, no
// UB, no exception":
//   - it either reports errors or produces text, never both or neither;
//   - the text is JSON that parses back, names every emitted user in
//     experimental.v2ray_api.stats.users, and carries every user name and
//     password byte for byte (escaped as JSON, never interpreted);
//   - the same rows in another order give the same bytes.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "config_generator.h"
#include "fuzz_check.h"

namespace {

// Whether JSON can carry `text` unchanged (valid UTF-8).
bool JsonSafe(const std::string& text) {
  try {
    (void)nlohmann::json(text).dump();
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace boxmeter;
  FuzzedDataProvider provider(data, size);
  GeneratorInput input;
  input.template_name = "fuzz.json";
  input.stats_listen = "127.0.0.1:8080";
  input.stats_outbounds = {"direct"};
  const std::vector<std::string>& types = SupportedInboundTypes();
  size_t inbounds = provider.ConsumeIntegralInRange<size_t>(0, 3);
  for (size_t i = 0; i < inbounds; ++i) {
    InboundRow row;
    row.tag = provider.ConsumeRandomLengthString(16);
    row.type =
        types[provider.ConsumeIntegralInRange<size_t>(0, types.size() - 1)];
    if (provider.ConsumeBool()) {
      row.options_json = provider.ConsumeRandomLengthString(64);
    }
    input.inbounds.push_back(row);
  }
  size_t users = provider.ConsumeIntegralInRange<size_t>(0, 4);
  for (size_t i = 0; i < users; ++i) {
    UserRow user;
    user.name = provider.ConsumeRandomLengthString(16);
    user.password = provider.ConsumeRandomLengthString(16);
    if (provider.ConsumeBool()) {
      user.uuid = "0f8e2d6c-5b1a-4c3e-9d7f-2a6b8c0e4f13";
    }
    if (provider.ConsumeBool())
      user.flow = provider.ConsumeRandomLengthString(8);
    input.users.push_back(user);
    for (const InboundRow& row : input.inbounds) {
      if (provider.ConsumeBool()) input.links.push_back({row.tag, user.name});
    }
  }
  input.template_json = provider.ConsumeRemainingBytesAsString();

  GeneratedConfig result = GenerateSingBoxConfig(input);
  FUZZ_CHECK(result.ok() != result.text.empty());
  if (!result.ok()) return 0;

  nlohmann::json parsed = nlohmann::json::parse(result.text);  // must parse
  const nlohmann::json& stats =
      parsed.at("experimental").at("v2ray_api").at("stats");
  FUZZ_CHECK(stats.at("users").size() == result.users);
  std::set<std::string> linked;
  for (const InboundUserLink& link : input.links) linked.insert(link.user_name);
  for (const UserRow& user : input.users) {
    if (!linked.count(user.name) || !JsonSafe(user.name)) continue;
    const nlohmann::json& names = stats.at("users");
    FUZZ_CHECK(std::find(names.begin(), names.end(), user.name) != names.end());
  }
  for (const nlohmann::json& inbound : parsed.at("inbounds")) {
    if (!inbound.contains("users")) continue;
    for (const nlohmann::json& object : inbound.at("users")) {
      std::string name = object.contains("name")
                             ? object.at("name").get<std::string>()
                             : object.at("username").get<std::string>();
      auto row =
          std::find_if(input.users.begin(), input.users.end(),
                       [&](const UserRow& user) { return user.name == name; });
      if (row == input.users.end()) {
        // Only a name that is not UTF-8 comes out changed (U+FFFD).
        FUZZ_CHECK(std::any_of(
            input.users.begin(), input.users.end(),
            [](const UserRow& user) { return !JsonSafe(user.name); }));
        continue;
      }
      if (object.contains("password") && JsonSafe(*row->password)) {
        FUZZ_CHECK(object.at("password") == *row->password);
      }
    }
  }

  GeneratorInput reversed = input;
  std::reverse(reversed.inbounds.begin(), reversed.inbounds.end());
  std::reverse(reversed.users.begin(), reversed.users.end());
  std::reverse(reversed.links.begin(), reversed.links.end());
  FUZZ_CHECK(GenerateSingBoxConfig(reversed).text == result.text);
  return 0;
}
