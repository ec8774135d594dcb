// What v2ray-core can run of a sing-box config boxmeter-gen wrote, for the
// tests and the demo that show the quota loop with the real v2ray-core
// (which cannot load sing-box's config).
#pragma once

#include <string>

#include "v2ray_server.h"

namespace boxmeter::testing {

// v2ray-core's socks inbounds for the sing-box config `config_json`: one per
// socks inbound, in order, its tag kept and its users as accounts. Throws
// std::runtime_error naming the inbound for anything else: another type, or
// a socks inbound without users (which sing-box would run without
// authentication, and boxmeter-gen must never write).
V2RayServer::Options V2RayOptionsFromSingBox(const std::string& config_json);

}  // namespace boxmeter::testing
