#include "pg_inventory.h"

#include <pqxx/pqxx>
#include <set>
#include <utility>

#include "config.h"  // RedactUrl
#include "pg_connection_defaults.h"
#include "pg_error_text.h"

namespace boxmeter {
namespace {

std::optional<std::string> OptionalText(const pqxx::field& field) {
  if (field.is_null()) return std::nullopt;
  return std::string(field.c_str(), field.size());
}

}  // namespace

PgInventory::PgInventory(std::string url) : url_(std::move(url)) {}

Status PgInventory::Read(const std::string& node, Inventory* out) {
  std::string where = "PostgreSQL " + RedactUrl(url_);
  try {
    pqxx::connection connection(WithConnectionDefaults(url_));
    connection.set_client_encoding("UTF8");
    // One snapshot: inbounds and users as of the same moment.
    pqxx::transaction<pqxx::repeatable_read, pqxx::read_only> tx(connection);
    Inventory inventory;
    for (const pqxx::row& row :
         tx.exec_params("SELECT tag, type, listen, listen_port, options::text "
                        "FROM inbounds WHERE node = $1 AND enabled",
                        node)) {
      InboundRow inbound;
      inbound.tag = row[0].as<std::string>();
      inbound.type = row[1].as<std::string>();
      inbound.listen = row[2].as<std::string>();
      if (!row[3].is_null()) inbound.listen_port = row[3].as<int>();
      inbound.options_json = row[4].as<std::string>();
      inventory.inbounds.push_back(std::move(inbound));
    }
    std::set<std::string> seen;
    for (const pqxx::row& row : tx.exec_params(
             "SELECT inbound_tag, user_name, uuid::text, password, flow, "
             "alter_id FROM node_inbound_users WHERE node = $1",
             node)) {
      std::string name = row[1].as<std::string>();
      inventory.links.push_back({row[0].as<std::string>(), name});
      if (!seen.insert(name).second) continue;
      UserRow user;
      user.name = std::move(name);
      user.uuid = OptionalText(row[2]);
      user.password = OptionalText(row[3]);
      user.flow = OptionalText(row[4]);
      if (!row[5].is_null()) user.alter_id = row[5].as<int>();
      inventory.users.push_back(std::move(user));
    }
    tx.commit();
    *out = std::move(inventory);
    return Status::Ok();
  } catch (const pqxx::broken_connection& e) {
    return Status::Unavailable(
        "cannot read the inbounds of node '" + node + "' from " + where +
        ": connection lost or refused (" + PgErrorText(e.what(), url_) +
        "); is the server up and database.url right?");
  } catch (const pqxx::sql_error& e) {
    std::string message = "reading the inbounds of node '" + node + "' from " +
                          where + " failed: " + PgErrorText(e.what(), url_);
    // 42P01 undefined_table, 42883 undefined_function: an old schema.
    if (e.sqlstate() == "42P01" || e.sqlstate() == "42883") {
      message +=
          "; the database schema is missing or older than this boxmeter-gen: "
          "run boxmeter-collector --migrate (or start the collector once)";
    } else if (!e.sqlstate().empty()) {
      message += " [SQLSTATE " + e.sqlstate() + "]";
    }
    return Status::Error(message);
  } catch (const std::exception& e) {
    return Status::Error("reading the inbounds of node '" + node + "' from " +
                         where + " failed: " + PgErrorText(e.what(), url_));
  }
}

}  // namespace boxmeter
