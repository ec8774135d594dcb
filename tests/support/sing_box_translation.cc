#include "sing_box_translation.h"

#include <nlohmann/json.hpp>
#include <stdexcept>

namespace boxmeter::testing {

V2RayServer::Options V2RayOptionsFromSingBox(const std::string& config_json) {
  nlohmann::json config = nlohmann::json::parse(config_json, nullptr, false);
  if (config.is_discarded() || !config.contains("inbounds")) {
    throw std::runtime_error(
        "V2RayOptionsFromSingBox: not a sing-box config with inbounds: " +
        config_json.substr(0, 200));
  }
  V2RayServer::Options options;
  for (const nlohmann::json& inbound : config["inbounds"]) {
    std::string tag = inbound.value("tag", "");
    if (inbound.value("type", "") != "socks") {
      throw std::runtime_error("inbound '" + tag + "' is of type " +
                               inbound.value("type", "?") +
                               "; only socks inbounds translate to v2ray-core");
    }
    const nlohmann::json& users = inbound.value("users", nlohmann::json());
    if (!users.is_array() || users.empty()) {
      throw std::runtime_error("socks inbound '" + tag +
                               "' has no users: sing-box would let anyone in");
    }
    V2RayServer::Inbound translated{tag, {}};
    for (const nlohmann::json& user : users) {
      translated.accounts.push_back({user.at("username").get<std::string>(),
                                     user.at("password").get<std::string>()});
    }
    options.inbounds.push_back(std::move(translated));
  }
  return options;
}

}  // namespace boxmeter::testing
