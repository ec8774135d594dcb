// Migrations: the schema, as the numbered files of schema/ embedded into the
// binary at build time (see embed_migrations.cmake), so a collector can bring
// its database up to date without any files beside it.
#pragma once

#include <string_view>
#include <vector>

namespace boxmeter {

struct Migration {
  std::string_view name;  // the file name, e.g. "0001_init.sql"
  std::string_view sql;   // its content, applied in one transaction
};

// Every migration, sorted by name: the order to apply them in.
const std::vector<Migration>& EmbeddedMigrations();

}  // namespace boxmeter
