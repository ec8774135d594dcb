// PgInventory: what boxmeter-gen reads from PostgreSQL for one node, as the
// pure generator's input rows. Keeps pqxx out of the generator.
//
// Reads, in one read-only snapshot, the node's enabled inbounds and
// node_inbound_users (schema/0002_generator.sql): the eligible users of each
// inbound with their credentials. Eligibility (enabled, not expired, under
// quota) is decided by the eligible_users view, the same rule the collector's
// users_fingerprint() uses, so the two always agree.
#pragma once

#include <string>
#include <vector>

#include "config_generator.h"
#include "status.h"

namespace boxmeter {

struct Inventory {
  std::vector<InboundRow> inbounds;
  std::vector<UserRow> users;  // each eligible user linked to an inbound, once
  std::vector<InboundUserLink> links;
};

class PgInventory {
 public:
  // `url`: a libpq URL or key=value string.
  explicit PgInventory(std::string url);

  // Unavailable when the database cannot be reached; Error for anything
  // else (e.g. a schema that is not migrated), naming the database with
  // its password hidden.
  Status Read(const std::string& node, Inventory* out);

 private:
  std::string url_;
};

}  // namespace boxmeter
