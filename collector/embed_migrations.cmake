# Writes a C++ source that embeds every schema/*.sql, sorted by file name, as
# raw string literals, so the binaries carry their schema with them.
#
#   cmake -DSCHEMA_DIR=<dir> -DOUTPUT=<file.cc> -P embed_migrations.cmake
cmake_minimum_required(VERSION 3.25)

set(delimiter "boxmeter_sql")
file(GLOB files RELATIVE "${SCHEMA_DIR}" "${SCHEMA_DIR}/*.sql")
list(SORT files)

set(out "// Generated from schema/*.sql by embed_migrations.cmake. Do not edit.\n")
string(APPEND out "#include \"migrations.h\"\n\nnamespace boxmeter {\n\n")
string(APPEND out "const std::vector<Migration>& EmbeddedMigrations() {\n")
string(APPEND out "  static const std::vector<Migration> migrations = {\n")
foreach(name IN LISTS files)
  file(READ "${SCHEMA_DIR}/${name}" sql)
  string(FIND "${sql}" ")${delimiter}\"" clash)
  if(NOT clash EQUAL -1)
    message(FATAL_ERROR "${SCHEMA_DIR}/${name} contains )${delimiter}\", "
                        "which ends the raw string literal it is embedded in")
  endif()
  string(APPEND out "      {\"${name}\", R\"${delimiter}(${sql})${delimiter}\"},\n")
endforeach()
string(APPEND out "  };\n  return migrations;\n}\n\n}  // namespace boxmeter\n")

# Rewrite only on change, so an unchanged schema does not rebuild anything.
set(previous "")
if(EXISTS "${OUTPUT}")
  file(READ "${OUTPUT}" previous)
endif()
if(NOT previous STREQUAL out)
  file(WRITE "${OUTPUT}" "${out}")
endif()
