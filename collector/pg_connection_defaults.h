// libpq's defaults wait forever for an unresponsive server: no connect
// timeout, and TCP keepalives only after two hours idle. A sidecar whose
// database host vanished without a reset (a partition, a dead VM) would hold
// its commits that long. WithConnectionDefaults adds shorter limits to a
// database.url that sets none of its own.
#pragma once

#include <string>
#include <string_view>

namespace boxmeter {

// The parameters added, as libpq key=value pairs.
inline constexpr std::string_view kConnectTimeoutDefault = "connect_timeout=10";
inline constexpr std::string_view kKeepaliveDefaults =
    "keepalives=1 keepalives_idle=30 keepalives_interval=10 "
    "keepalives_count=3 tcp_user_timeout=60000";

// Returns `url` (a postgresql:// or postgres:// URI, or a key=value string,
// possibly empty) with the defaults above appended in the same form. A group
// is left out when `url` already names any of its parameters (by name,
// anywhere in it, so a password that spells one only costs the default);
// connect_timeout is also left out when `connect_timeout_from_env` is true
// ($PGCONNECT_TIMEOUT is set), since a parameter in the string would
// override it.
std::string WithConnectionDefaults(std::string_view url,
                                   bool connect_timeout_from_env);

// The same, with connect_timeout_from_env read from this process's
// environment: what PgStore and PgInventory connect with.
std::string WithConnectionDefaults(std::string_view url);

// `text` with each well-formed %XX replaced by its byte, as libpq decodes a
// URI's user info, keywords and values; anything else kept as it is.
std::string PercentDecoded(std::string_view text);

}  // namespace boxmeter
