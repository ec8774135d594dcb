// boxmeter-pg-template DIR: writes PgServer's template data directory to DIR
// (PgServer::WriteTemplate), so that the PostgreSQL servers of the tests copy
// it instead of each running initdb. CTest runs it as the setup of the
// fixture pg_template (tests/CMakeLists.txt); a failure is reported with
// initdb's output and exit status 1.
#include <cstdio>
#include <exception>
#include <string>

#include "pg_server.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr,
                 "usage: %s DIR (writes a PostgreSQL data directory template "
                 "to DIR; got %d arguments)\n",
                 argv[0], argc - 1);
    return 64;  // EX_USAGE
  }
  try {
    boxmeter::testing::PgServer::WriteTemplate(argv[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  std::printf("PostgreSQL template data directory written to %s\n", argv[1]);
  return 0;
}
