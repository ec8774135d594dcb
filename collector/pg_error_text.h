// PgErrorText: a libpq or libpqxx message made fit for a log line. libpq
// quotes pieces of the connection string in its errors: with
// postgresql://owner:Secr%zzet42@host/db it says
// `invalid percent-encoded token: "Secr%zzet42"`. So every message from
// libpq or libpqxx that reaches a log or an error goes through here.
#pragma once

#include <string>
#include <string_view>

namespace boxmeter {

// `message` on one line, without the password it may quote, escaped and cut
// like other foreign text (SafeText). `conninfo` is the connection string
// the connection was made with. When libpq can parse it, every secret it
// holds (password, sslpassword: the options libpq marks as secret, however
// the keyword is spelt or percent-encoded) and $PGPASSWORD is replaced by
// "***" wherever it appears, as is any double-quoted piece that holds one
// once percent-decoded. When libpq cannot parse it, libpq cannot say where
// the password is, so every double-quoted piece of the message is replaced.
std::string PgErrorText(std::string_view message, std::string_view conninfo);

}  // namespace boxmeter
