// Whether the schema is ready to be distributed by node (docs/scale.md,
// "Beyond one database"): every node-scoped table's primary key and indexes
// lead with `node` (the nodes table: its name), so that on Citus each table
// is distributed by node with its keys local to one shard, and one node's
// commit touches one shard.
//
// Some do not yet; they are pinned below (kKnownGaps) with what distributing
// them would need, so that a new table or index that breaks the rule fails
// here, and so does fixing a gap without taking it off the list. A schema
// change that fixes one goes in a new migration file.
#include <gtest/gtest.h>

#include <algorithm>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "sql_fixture.h"

namespace boxmeter {
namespace {

using testing::SqlTest;

// Rows that belong to one node: what a node's collector or its generator
// writes and reads. Distributed by node on Citus.
const std::set<std::string> kNodeScoped = {
    "nodes",    "counters",      "counter_hourly", "counter_weekly",
    "inbounds", "inbound_users", "node_grants",    "node_multipliers",
};

// Everything else: per user or for the whole installation, read by every
// node's commit (users' quotas, settings): reference tables on Citus.
// usage_events has a node column, but only to say which commit raised the
// event; its rows are per user.
const std::set<std::string> kNotNodeScoped = {
    "users",
    "renamed_users",
    "quota_periods",
    "usage_events",
    "usage_event_delivery",  // one row: who delivers events now
    "boxmeter_settings",
    "history_retention",
    "counter_weekly_span",  // one row: how far the weekly sums reach
    "schema_migrations",
};

// The keys and indexes of node-scoped tables that do not lead with node
// today, as "table kind (columns)". Each needs a migration before the table
// can be distributed (docs/scale.md says which).
const std::set<std::string> kKnownGaps = {
    // A surrogate key that counter_hourly refers to; (node, kind, name) is
    // the natural one and already leads with node.
    "counters primary key (id)",
    // Per-user lookups across nodes (user_traffic for one name): on Citus a
    // per-shard index and a multi-shard query, which it is anyway.
    "counters index (name)",
    // No node column at all: rows reach their node through counter_id.
    "counter_hourly primary key (counter_id,hour)",
    "counter_hourly index (hour)",
    // The weekly sums of counter_hourly's rows, keyed the same way.
    "counter_weekly primary key (counter_id,week)",
    "counter_weekly index (week)",
    "inbounds primary key (id)",
    // No node column: rows reach their node through inbound_id.
    "inbound_users primary key (inbound_id,user_id)",
    "inbound_users index (user_id)",
};

class SqlDistributionTest : public SqlTest {
 protected:
  std::vector<std::string> Lines(const std::string& sql) {
    std::vector<std::string> lines;
    std::istringstream in(Query(sql));
    for (std::string line; std::getline(in, line);) {
      if (!line.empty()) lines.push_back(line);
    }
    return lines;
  }
};

std::string Join(const std::set<std::string>& names) {
  std::string out;
  for (const std::string& name : names) out += "\n  " + name;
  return out;
}

TEST_F(SqlDistributionTest, EveryTableIsClassifiedAsNodeScopedOrNot) {
  // Partitions are their parent's; they are not tables of their own here.
  std::set<std::string> unclassified, vanished;
  std::set<std::string> tables;
  for (const std::string& table :
       Lines("SELECT relname FROM pg_class WHERE relnamespace = "
             "'public'::regnamespace AND relkind IN ('r', 'p') "
             "AND NOT relispartition")) {
    tables.insert(table);
    if (!kNodeScoped.contains(table) && !kNotNodeScoped.contains(table)) {
      unclassified.insert(table);
    }
  }
  for (const auto* list : {&kNodeScoped, &kNotNodeScoped}) {
    for (const std::string& table : *list) {
      if (!tables.contains(table)) vanished.insert(table);
    }
  }
  EXPECT_TRUE(unclassified.empty())
      << "add these tables to kNodeScoped (their rows belong to one node; "
         "then their keys must lead with node) or kNotNodeScoped:"
      << Join(unclassified);
  EXPECT_TRUE(vanished.empty())
      << "these tables are listed but not in the schema:" << Join(vanished);
  // The rule has something to check: the tables with a node column.
  EXPECT_GE(kNodeScoped.size(), 5u);
}

TEST_F(SqlDistributionTest, NodeScopedKeysAndIndexesLeadWithNode) {
  // Every index of every node-scoped table (primary key, unique constraints,
  // plain indexes; partial ones too), its columns in order.
  std::set<std::string> gaps;
  std::set<std::string> checked;
  for (const std::string& line :
       Lines("SELECT t.relname, i.indisprimary, "
             "       (SELECT string_agg(coalesce(a.attname, '(expression)'), "
             "                          ',' ORDER BY k.n) "
             "          FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
             "          LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid "
             "               AND a.attnum = k.attnum) "
             "  FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid "
             " WHERE t.relnamespace = 'public'::regnamespace "
             "   AND NOT t.relispartition")) {
    std::vector<std::string> fields;
    std::istringstream in(line);
    for (std::string field; std::getline(in, field, '|');) {
      fields.push_back(field);
    }
    ASSERT_EQ(fields.size(), 3u) << line;
    const std::string& table = fields[0];
    if (!kNodeScoped.contains(table)) continue;
    std::string lead = fields[2].substr(0, fields[2].find(','));
    std::string node_column = table == "nodes" ? "name" : "node";
    std::string described = table +
                            (fields[1] == "t" ? " primary key (" : " index (") +
                            fields[2] + ")";
    checked.insert(described);
    if (lead != node_column) gaps.insert(described);
  }
  // The query saw the keys that do lead with node, too.
  EXPECT_TRUE(checked.contains("counters index (node,kind,name)"))
      << Join(checked);
  EXPECT_TRUE(checked.contains("node_grants primary key (node,role_name)"))
      << Join(checked);

  std::set<std::string> new_gaps, fixed;
  std::set_difference(gaps.begin(), gaps.end(), kKnownGaps.begin(),
                      kKnownGaps.end(),
                      std::inserter(new_gaps, new_gaps.end()));
  std::set_difference(kKnownGaps.begin(), kKnownGaps.end(), gaps.begin(),
                      gaps.end(), std::inserter(fixed, fixed.end()));
  EXPECT_TRUE(new_gaps.empty())
      << "these keys or indexes of node-scoped tables do not lead with node, "
         "so the table cannot be distributed by node without a schema "
         "change; put node first (or, for a deliberate cross-node index, add "
         "it to kKnownGaps saying why):"
      << Join(new_gaps);
  EXPECT_TRUE(fixed.empty())
      << "these known gaps are gone (lead with node now, or gone): take "
         "them off kKnownGaps and docs/scale.md:"
      << Join(fixed);
}

}  // namespace
}  // namespace boxmeter
