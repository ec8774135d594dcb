#include "pg_connection_defaults.h"

#include <gtest/gtest.h>

namespace boxmeter {
namespace {

const std::string kAll =
    "connect_timeout=10 keepalives=1 keepalives_idle=30 "
    "keepalives_interval=10 keepalives_count=3 tcp_user_timeout=60000";
const std::string kAllQuery =
    "connect_timeout=10&keepalives=1&keepalives_idle=30&"
    "keepalives_interval=10&keepalives_count=3&tcp_user_timeout=60000";

TEST(PgConnectionDefaultsTest, UriWithoutQueryGetsOne) {
  EXPECT_EQ(WithConnectionDefaults("postgresql://u@db/boxmeter", false),
            "postgresql://u@db/boxmeter?" + kAllQuery);
  EXPECT_EQ(WithConnectionDefaults("postgres://db", false),
            "postgres://db?" + kAllQuery);
}

TEST(PgConnectionDefaultsTest, UriWithQueryIsExtended) {
  EXPECT_EQ(WithConnectionDefaults("postgresql://db/x?sslmode=require", false),
            "postgresql://db/x?sslmode=require&" + kAllQuery);
  EXPECT_EQ(WithConnectionDefaults("postgresql://db/x?", false),
            "postgresql://db/x?" + kAllQuery);
  EXPECT_EQ(WithConnectionDefaults("postgresql://db/x?a=b&", false),
            "postgresql://db/x?a=b&" + kAllQuery);
}

TEST(PgConnectionDefaultsTest, KeyValueStringsAndEmptyOnes) {
  EXPECT_EQ(WithConnectionDefaults("host=db dbname=boxmeter", false),
            "host=db dbname=boxmeter " + kAll);
  // Empty: everything from PG* variables.
  EXPECT_EQ(WithConnectionDefaults("", false), kAll);
}

TEST(PgConnectionDefaultsTest, TheOperatorsOwnSettingsWin) {
  EXPECT_EQ(WithConnectionDefaults("host=db connect_timeout=3", false),
            "host=db connect_timeout=3 keepalives=1 keepalives_idle=30 "
            "keepalives_interval=10 keepalives_count=3 "
            "tcp_user_timeout=60000");
  EXPECT_EQ(WithConnectionDefaults("postgresql://db?keepalives_idle=5", false),
            "postgresql://db?keepalives_idle=5&connect_timeout=10");
  EXPECT_EQ(WithConnectionDefaults("host=db tcp_user_timeout=0", false),
            "host=db tcp_user_timeout=0 connect_timeout=10");
  EXPECT_EQ(
      WithConnectionDefaults("host=db connect_timeout=1 keepalives=0", false),
      "host=db connect_timeout=1 keepalives=0");
}

TEST(PgConnectionDefaultsTest, PgConnectTimeoutInTheEnvironmentWins) {
  EXPECT_EQ(WithConnectionDefaults("host=db", true),
            "host=db keepalives=1 keepalives_idle=30 keepalives_interval=10 "
            "keepalives_count=3 tcp_user_timeout=60000");
}

}  // namespace
}  // namespace boxmeter
