#include "reference_writers.h"

#include <chrono>
#include <pqxx/pqxx>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "pg_store.h"

namespace boxmeter::testing {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Start of the UTC hour of `ms`, in seconds since the epoch (as PgStore).
int64_t HourStart(int64_t ms) { return ms / 3'600'000 * 3600; }

const std::vector<std::string> kRowColumns = {
    "kind",        "name",          "uplink",    "downlink",
    "base_uplink", "base_downlink", "generation"};

constexpr const char* kRowTableColumns = R"sql(
  kind text NOT NULL,
  name text NOT NULL,
  uplink bigint NOT NULL,
  downlink bigint NOT NULL,
  base_uplink bigint NOT NULL,
  base_downlink bigint NOT NULL,
  generation bigint NOT NULL
)sql";

// The same COPY stream PgStore sends, so client-side costs are alike.
void StreamRows(pqxx::transaction_base& tx, const std::string& table,
                const CommitBatch& batch) {
  pqxx::stream_to stream(tx, table, kRowColumns);
  for (const CommitRow& row : batch.rows) {
    stream << std::make_tuple(std::string(CounterKindName(row.key.kind)),
                              row.key.name, row.delta.uplink,
                              row.delta.downlink, row.baseline.uplink,
                              row.baseline.downlink, row.generation);
  }
  stream.complete();
}

// The set-based path, statement by statement. $1: node, $2: the hour.
constexpr const char* kUpdateKnown = R"sql(
UPDATE counters c
   SET uplink = c.uplink + r.uplink,
       downlink = c.downlink + r.downlink,
       base_uplink = r.base_uplink,
       base_downlink = r.base_downlink,
       generation = r.generation,
       last_seen = now()
  FROM reference_rows r
 WHERE c.node = $1 AND c.kind = r.kind AND c.name = r.name
)sql";

constexpr const char* kInsertNew = R"sql(
INSERT INTO counters (node, kind, name, uplink, downlink, base_uplink,
                      base_downlink, generation)
SELECT $1, r.kind, r.name, r.uplink, r.downlink, r.base_uplink,
       r.base_downlink,
       r.generation
  FROM reference_rows r
 WHERE NOT EXISTS (SELECT 1 FROM counters c
                    WHERE c.node = $1 AND c.kind = r.kind AND c.name = r.name)
)sql";

constexpr const char* kUpsertHourly = R"sql(
INSERT INTO counter_hourly AS h (counter_id, hour, uplink, downlink)
SELECT c.id, timestamptz 'epoch' + $2::bigint * interval '1 second',
       r.uplink, r.downlink
  FROM reference_rows r
  JOIN counters c ON c.node = $1 AND c.kind = r.kind AND c.name = r.name
ON CONFLICT (counter_id, hour) DO UPDATE SET
  uplink = h.uplink + excluded.uplink,
  downlink = h.downlink + excluded.downlink
)sql";

// The naive writer's statement: one counter, totals and hourly row, one
// round trip. $1 node, $2 kind, $3 name, $4/$5 deltas, $6/$7 baseline,
// $8 the baseline's generation, $9 the hour (s).
constexpr const char* kNaiveStatement = R"sql(
WITH c AS (
  UPDATE counters
     SET uplink = uplink + $4, downlink = downlink + $5,
         base_uplink = $6, base_downlink = $7,
         generation = $8::bigint,
         last_seen = now()
   WHERE node = $1 AND kind = $2 AND name = $3
  RETURNING id
)
INSERT INTO counter_hourly AS h (counter_id, hour, uplink, downlink)
SELECT id, timestamptz 'epoch' + $9::bigint * interval '1 second', $4, $5
  FROM c
ON CONFLICT (counter_id, hour) DO UPDATE SET
  uplink = h.uplink + excluded.uplink,
  downlink = h.downlink + excluded.downlink
)sql";

// The delta log: one row per counter per commit, no index, never updated.
constexpr const char* kCreateDeltaLog = R"sql(
CREATE TABLE IF NOT EXISTS counter_log (
  node text NOT NULL,
  seq bigint NOT NULL,
  hour bigint NOT NULL,
  kind text NOT NULL,
  name text NOT NULL,
  uplink bigint NOT NULL,
  downlink bigint NOT NULL,
  base_uplink bigint NOT NULL,
  base_downlink bigint NOT NULL,
  generation bigint NOT NULL
)
)sql";

// The fold: empties the node's log into a temporary table (one row per
// counter: deltas summed, the newest baseline), then applies it the way
// PgStore applies a commit. Hourly sums per (counter, hour). $1: node.
constexpr const char* kFoldMove = R"sql(
CREATE TEMP TABLE folded ON COMMIT DROP AS
WITH moved AS (DELETE FROM counter_log WHERE node = $1 RETURNING *)
SELECT kind, name, hour, sum(uplink)::bigint AS uplink,
       sum(downlink)::bigint AS downlink,
       (array_agg(base_uplink ORDER BY seq DESC))[1] AS base_uplink,
       (array_agg(base_downlink ORDER BY seq DESC))[1] AS base_downlink,
       (array_agg(generation ORDER BY seq DESC))[1]
         AS generation,
       max(seq) AS seq
  FROM moved
 GROUP BY kind, name, hour
)sql";

constexpr const char* kFoldApply = R"sql(
WITH latest AS (
  SELECT DISTINCT ON (kind, name) kind, name, base_uplink, base_downlink,
         generation
    FROM folded ORDER BY kind, name, seq DESC
), sums AS (
  SELECT kind, name, sum(uplink) AS uplink, sum(downlink) AS downlink
    FROM folded GROUP BY kind, name
), updated AS (
  UPDATE counters c
     SET uplink = c.uplink + s.uplink, downlink = c.downlink + s.downlink,
         base_uplink = l.base_uplink, base_downlink = l.base_downlink,
         generation = l.generation,
         last_seen = now()
    FROM sums s JOIN latest l USING (kind, name)
   WHERE c.node = $1 AND c.kind = s.kind AND c.name = s.name
  RETURNING c.id, c.kind, c.name
)
INSERT INTO counter_hourly AS h (counter_id, hour, uplink, downlink)
SELECT u.id, timestamptz 'epoch' + f.hour * interval '1 second', f.uplink,
       f.downlink
  FROM updated u JOIN folded f USING (kind, name)
ON CONFLICT (counter_id, hour) DO UPDATE SET
  uplink = h.uplink + excluded.uplink,
  downlink = h.downlink + excluded.downlink
)sql";

}  // namespace

void PrepareReferenceDatabase(const std::string& url, const std::string& node) {
  PgStore store(url, node);
  NodeState state;
  Status status = store.Migrate();
  if (status.ok()) status = store.LoadNode(&state);
  if (!status.ok()) {
    throw std::runtime_error("preparing a reference database: " +
                             status.message());
  }
}

SetBasedWriter::SetBasedWriter(const std::string& url, std::string node)
    : connection_(std::make_unique<pqxx::connection>(url)),
      node_(std::move(node)) {}

SetBasedWriter::~SetBasedWriter() = default;

double SetBasedWriter::Commit(const CommitBatch& batch) {
  auto start = Clock::now();
  pqxx::work tx(*connection_);
  tx.exec_params("UPDATE nodes SET commit_seq = commit_seq + 1 WHERE name = $1",
                 node_);
  tx.exec(std::string("CREATE TEMP TABLE reference_rows (") + kRowTableColumns +
          ") ON COMMIT DROP");
  StreamRows(tx, "reference_rows", batch);
  // Without statistics the planner guesses the temporary table's size; and
  // the rows are cached, so index probes are cheaper than a disk's (as in
  // PgStore).
  tx.exec("ANALYZE reference_rows");
  tx.exec("SET LOCAL random_page_cost = 1.1");
  tx.exec("SET LOCAL enable_mergejoin = off");
  tx.exec_params(kUpdateKnown, node_);
  tx.exec_params(kInsertNew, node_);
  tx.exec_params(kUpsertHourly, node_, HourStart(batch.observed_at_ms));
  tx.commit();
  return SecondsSince(start);
}

NaiveWriter::NaiveWriter(const std::string& url, std::string node,
                         bool prepared)
    : connection_(std::make_unique<pqxx::connection>(url)),
      node_(std::move(node)),
      prepared_(prepared) {
  if (prepared_) connection_->prepare("naive_commit", kNaiveStatement);
}

NaiveWriter::~NaiveWriter() = default;

double NaiveWriter::Commit(const CommitBatch& batch, size_t limit) {
  auto start = Clock::now();
  int64_t hour = HourStart(batch.observed_at_ms);
  pqxx::work tx(*connection_);
  size_t written = 0;
  for (const CommitRow& row : batch.rows) {
    if (written++ == limit) break;
    std::string kind(CounterKindName(row.key.kind));
    if (prepared_) {
      tx.exec_prepared("naive_commit", node_, kind, row.key.name,
                       row.delta.uplink, row.delta.downlink,
                       row.baseline.uplink, row.baseline.downlink,
                       row.generation, hour);
    } else {
      tx.exec_params(kNaiveStatement, node_, kind, row.key.name,
                     row.delta.uplink, row.delta.downlink, row.baseline.uplink,
                     row.baseline.downlink, row.generation, hour);
    }
  }
  tx.commit();
  return SecondsSince(start);
}

DeltaLogWriter::DeltaLogWriter(const std::string& url, std::string node)
    : connection_(std::make_unique<pqxx::connection>(url)),
      node_(std::move(node)) {
  pqxx::work tx(*connection_);
  tx.exec(kCreateDeltaLog);
  seq_ =
      tx.exec_params1("SELECT commit_seq FROM nodes WHERE name = $1", node_)[0]
          .as<int64_t>();
  tx.commit();
}

DeltaLogWriter::~DeltaLogWriter() = default;

double DeltaLogWriter::Commit(const CommitBatch& batch) {
  auto start = Clock::now();
  pqxx::work tx(*connection_);
  pqxx::result bumped = tx.exec_params(
      "UPDATE nodes SET commit_seq = commit_seq + 1 "
      "WHERE name = $1 AND commit_seq = $2",
      node_, seq_);
  if (bumped.affected_rows() != 1) {
    throw std::runtime_error("delta log: unexpected commit sequence");
  }
  int64_t hour = HourStart(batch.observed_at_ms);
  pqxx::stream_to stream(
      tx, "counter_log",
      std::vector<std::string>{"node", "seq", "hour", "kind", "name", "uplink",
                               "downlink", "base_uplink", "base_downlink",
                               "generation"});
  for (const CommitRow& row : batch.rows) {
    stream << std::make_tuple(
        node_, seq_ + 1, hour, std::string(CounterKindName(row.key.kind)),
        row.key.name, row.delta.uplink, row.delta.downlink, row.baseline.uplink,
        row.baseline.downlink, row.generation);
  }
  stream.complete();
  tx.commit();
  ++seq_;
  return SecondsSince(start);
}

double DeltaLogWriter::Fold() {
  auto start = Clock::now();
  pqxx::work tx(*connection_);
  tx.exec_params(kFoldMove, node_);
  tx.exec("ANALYZE folded");
  tx.exec_params(kFoldApply, node_);
  tx.commit();
  return SecondsSince(start);
}

CopyFloor::CopyFloor(const std::string& url)
    : connection_(std::make_unique<pqxx::connection>(url)) {
  pqxx::work tx(*connection_);
  tx.exec(std::string("CREATE UNLOGGED TABLE IF NOT EXISTS floor_rows (") +
          kRowTableColumns + ")");
  tx.commit();
}

CopyFloor::~CopyFloor() = default;

double CopyFloor::Copy(const CommitBatch& batch) {
  {
    pqxx::work tx(*connection_);
    tx.exec("TRUNCATE floor_rows");
    tx.commit();
  }
  auto start = Clock::now();
  pqxx::work tx(*connection_);
  StreamRows(tx, "floor_rows", batch);
  tx.commit();
  return SecondsSince(start);
}

}  // namespace boxmeter::testing
