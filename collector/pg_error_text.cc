#include "pg_error_text.h"

#include <libpq-fe.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "pg_connection_defaults.h"  // PercentDecoded
#include "safe_text.h"

namespace boxmeter {
namespace {

// The secrets libpq would send for `conninfo`, longest first; `parsed` tells
// whether libpq could parse it (if not, only $PGPASSWORD is known).
std::vector<std::string> Secrets(std::string_view conninfo, bool* parsed) {
  std::vector<std::string> secrets;
  std::string text(conninfo);
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(text.c_str(), &error);
  if (error) PQfreemem(error);  // may quote the password: never shown
  *parsed = options != nullptr;
  if (options) {
    for (PQconninfoOption* o = options; o->keyword; ++o) {
      // libpq's dispchar "*" marks a secret ("password", "sslpassword").
      bool secret = o->dispchar && o->dispchar[0] == '*';
      if (secret && o->val && *o->val) secrets.emplace_back(o->val);
    }
    PQconninfoFree(options);
  }
  if (const char* env = std::getenv("PGPASSWORD"); env && *env) {
    secrets.emplace_back(env);
  }
  // Longest first, so a secret inside another is not left half-replaced.
  std::sort(secrets.begin(), secrets.end(),
            [](const std::string& a, const std::string& b) {
              return a.size() > b.size();
            });
  return secrets;
}

bool HoldsAny(std::string_view text, const std::vector<std::string>& secrets) {
  return std::any_of(secrets.begin(), secrets.end(), [&](const auto& s) {
    return text.find(s) != std::string_view::npos;
  });
}

}  // namespace

std::string PgErrorText(std::string_view message, std::string_view conninfo) {
  bool parsed = false;
  std::vector<std::string> secrets = Secrets(conninfo, &parsed);
  std::string text;
  // Double-quoted pieces: libpq quotes what it found in the string.
  for (size_t i = 0; i < message.size();) {
    size_t open = message.find('"', i);
    size_t close = open == std::string_view::npos ? std::string_view::npos
                                                  : message.find('"', open + 1);
    if (close == std::string_view::npos) {
      text.append(message.substr(i));
      break;
    }
    text.append(message.substr(i, open + 1 - i));
    std::string_view piece = message.substr(open + 1, close - open - 1);
    bool hide = !parsed || HoldsAny(piece, secrets) ||
                HoldsAny(PercentDecoded(piece), secrets);
    text.append(hide ? std::string_view("***") : piece);
    text += '"';
    i = close + 1;
  }
  for (const std::string& secret : secrets) {
    for (size_t at = text.find(secret); at != std::string::npos;
         at = text.find(secret, at + 3)) {
      text.replace(at, secret.size(), "***");
    }
  }
  // libpq's messages span lines (DETAIL, HINT); a log wants one per event.
  std::string line;
  for (char c : text) {
    if (c == '\n' || c == '\r' || c == '\t') {
      if (!line.empty() && line.back() != ' ') line += ' ';
    } else {
      line += c;
    }
  }
  while (!line.empty() && line.back() == ' ') line.pop_back();
  return SafeText(line, kMaxShownMessage);
}

}  // namespace boxmeter
