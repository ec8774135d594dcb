// No password in any output: libpq's own messages quote pieces of the
// connection string, and libpq accepts a password in several forms (URL user
// info, password= pairs, percent-encoded keywords, PGPASSWORD). These run
// libpq for real, against nothing or a closed port, and look at every
// message that could reach a log.
#include "pg_error_text.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <pqxx/pqxx>
#include <string>

#include "config.h"
#include "pg_inventory.h"
#include "pg_store.h"
#include "support/process.h"

namespace boxmeter {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// libpq's message for `conninfo`, as the store and the generator show it.
std::string LibpqMessage(const std::string& conninfo) {
  try {
    pqxx::connection connection(conninfo);
  } catch (const std::exception& e) {
    return e.what();
  }
  ADD_FAILURE() << "connected with " << RedactUrl(conninfo);
  return "";
}

// Every way the collector and the generator report a connection failure.
void ExpectNoSecretAnywhere(const std::string& url, const std::string& secret) {
  std::string raw = LibpqMessage(url);
  EXPECT_THAT(PgErrorText(raw, url), Not(HasSubstr(secret))) << raw;
  EXPECT_THAT(RedactUrl(url), Not(HasSubstr(secret)));
  Status store = PgStore(url, "edge").Connect();
  EXPECT_FALSE(store.ok());
  EXPECT_THAT(store.message(), Not(HasSubstr(secret)));
  Inventory inventory;
  Status inventory_status = PgInventory(url).Read("edge", &inventory);
  EXPECT_FALSE(inventory_status.ok());
  EXPECT_THAT(inventory_status.message(), Not(HasSubstr(secret)));
}

TEST(PgErrorTextTest, LibpqQuotesABadlyEncodedPassword) {
  const std::string url = "postgresql://owner:Secr%zzet42@host/db";
  std::string raw = LibpqMessage(url);
  // The finding of issue 18: libpq echoes the token.
  ASSERT_THAT(raw, HasSubstr("Secr%zzet42"));
  std::string shown = PgErrorText(raw, url);
  EXPECT_THAT(shown, Not(HasSubstr("Secr")));
  EXPECT_THAT(shown, HasSubstr("invalid percent-encoded token: \"***\""));
  ExpectNoSecretAnywhere(url, "Secr");
  Status store = PgStore(url, "edge").Connect();
  EXPECT_THAT(store.message(), HasSubstr("postgresql://owner:***@host/db"));
}

TEST(PgErrorTextTest, PercentEncodedKeywordsAreRedacted) {
  int port = testing::FreePort();  // nothing listens: refused
  for (std::string query :
       {"pass%77ord=Hunter2Secret", "%70assword=Hunter2Secret",
        "ssl%70assword=Hunter2Secret", "password=Hunter2Secret%23frag"}) {
    std::string url = "postgresql://owner@127.0.0.1:" + std::to_string(port) +
                      "/db?connect_timeout=5&" + query;
    EXPECT_THAT(RedactUrl(url), Not(HasSubstr("Hunter2"))) << query;
    ExpectNoSecretAnywhere(url, "Hunter2");
  }
  // A literal password parameter, in a URL and in key=value form.
  ExpectNoSecretAnywhere("postgresql://127.0.0.1:" + std::to_string(port) +
                             "/db?password=Hunter2Secret&sslmode=disable",
                         "Hunter2");
  ExpectNoSecretAnywhere("host=127.0.0.1 port=" + std::to_string(port) +
                             " password='Hunter2 Secret' dbname=db",
                         "Hunter2");
}

TEST(PgErrorTextTest, ASecretLibpqParsedIsHiddenWhereverItIsQuoted) {
  const std::string url =
      "postgresql://owner:Hunter2Secret@127.0.0.1:1/db?sslmode=disable";
  EXPECT_EQ(
      PgErrorText("FATAL: role \"Hunter2Secret\" does not exist\n"
                  "DETAIL: raw Hunter2Secret, encoded \"Hunter%32Secret\"",
                  url),
      "FATAL: role \"***\" does not exist DETAIL: raw ***, encoded "
      "\"***\"");
  // What holds no secret is left alone (the role name helps the operator).
  EXPECT_EQ(PgErrorText("FATAL: role \"owner\" does not exist", url),
            "FATAL: role \"owner\" does not exist");
}

TEST(PgErrorTextTest, PgpasswordIsHiddenToo) {
  ASSERT_EQ(setenv("PGPASSWORD", "EnvHunter2", 1), 0);
  std::string shown =
      PgErrorText("password \"EnvHunter2\" rejected: EnvHunter2", "host=h");
  unsetenv("PGPASSWORD");
  EXPECT_THAT(shown, Not(HasSubstr("EnvHunter2")));
}

TEST(PgErrorTextTest, MessagesAreOneInertLine) {
  EXPECT_EQ(PgErrorText("ERROR: x\r\nDETAIL: \x1b[2Jy\a", "host=h"),
            "ERROR: x DETAIL: \\x1b[2Jy\\x07");
}

}  // namespace
}  // namespace boxmeter
