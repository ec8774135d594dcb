#include "pg_store.h"

#include <algorithm>
#include <chrono>
#include <pqxx/pqxx>
#include <set>
#include <string_view>
#include <tuple>
#include <unordered_set>
#include <utility>

#include "config.h"  // RedactUrl
#include "log.h"
#include "migrations.h"
#include "pg_connection_defaults.h"
#include "pg_error_text.h"
#include "safe_text.h"
#include "utf8.h"

namespace boxmeter {
namespace {

// Serializes migrations between every collector of a database. The value is
// "boxmeter" in ASCII; any fixed key works as long as nothing else uses it.
constexpr int64_t kMigrationLockKey = 7093020349380715890;

constexpr std::string_view kCommitTable = "boxmeter_commit_rows";

// PgStore::kPruneLockKey is held by the collector that prunes the history,
// so that the collectors of several nodes do not all delete the same rows.
static_assert(PgStore::kPruneLockKey != kMigrationLockKey);

// One batch of retention: the oldest rows from $1 (epoch seconds, where the
// previous batch stopped, so the index scan does not walk again over the
// entries it just deleted) up to the cutoff $2, at most $3 of them. ctid =
// ANY(ARRAY(...)) is a TID scan; `ctid IN (SELECT ...)` would be a join over
// the whole table. A ctid is unique only within a partition: the range on
// hour keeps the delete to the old rows (a row of another old partition
// with the same ctid goes a batch early) and prunes the younger partitions.
// Returns how many rows went and the newest hour deleted.
constexpr const char* kPruneBatch = R"sql(
WITH gone AS (
  DELETE FROM counter_hourly
   WHERE hour >= to_timestamp($1::bigint) AND hour < to_timestamp($2::bigint)
     AND ctid = ANY (ARRAY(
     SELECT ctid FROM counter_hourly
      WHERE hour >= to_timestamp($1::bigint) AND hour < to_timestamp($2::bigint)
      ORDER BY hour
      LIMIT $3::bigint))
  RETURNING hour)
SELECT count(*), coalesce(floor(extract(epoch FROM max(hour)))::bigint, $1)
  FROM gone
)sql";

// Rows of one commit, streamed with COPY. Dropped at the end of the
// transaction, so it also works through a transaction-pooling proxy. `i`
// numbers the rows, so the statement below can tell which ones it updated
// by an integer instead of comparing names again.
constexpr const char* kCreateCommitTable = R"sql(
CREATE TEMP TABLE boxmeter_commit_rows (
  i bigint NOT NULL,
  kind text NOT NULL,
  name text NOT NULL,
  uplink bigint NOT NULL,
  downlink bigint NOT NULL,
  base_uplink bigint NOT NULL,
  base_downlink bigint NOT NULL,
  generation bigint NOT NULL
) ON COMMIT DROP
)sql";

// One statement for the whole batch (see BENCHMARKS.md for the measurements
// behind its shape):
//   updated   adds the deltas to the counters that exist and sets their
//             baselines: a plain UPDATE ... FROM, which PostgreSQL can run as
//             one hash join and which writes one WAL record per row (an
//             INSERT ... ON CONFLICT DO UPDATE also locks each row first, a
//             second record, and took a third longer on large batches);
//   inserted  adds the counters the update did not find;
//   the rest  adds the same deltas to the hourly history of those counters.
//             That upsert stays INSERT ... ON CONFLICT: it probes the primary
//             key per row, so its cost follows the batch, never the size of
//             the history.
// Sums saturate at the bigint maximum with integer arithmetic, so a huge
// value never makes a commit (and every later one) fail. Deltas are never
// negative; GREATEST only keeps the overflow test itself from overflowing.
// $1: node, $2: the hour, as seconds since the epoch.
constexpr const char* kApplyCommit = R"sql(
WITH updated AS (
  UPDATE counters c SET
    uplink = CASE WHEN c.uplink > 9223372036854775807 - GREATEST(r.uplink, 0)
                  THEN 9223372036854775807 ELSE c.uplink + r.uplink END,
    downlink = CASE WHEN c.downlink > 9223372036854775807 -
                                      GREATEST(r.downlink, 0)
                    THEN 9223372036854775807 ELSE c.downlink + r.downlink END,
    base_uplink = r.base_uplink,
    base_downlink = r.base_downlink,
    generation = r.generation,
    last_seen = now()
    FROM boxmeter_commit_rows r
   WHERE c.node = $1 AND c.kind = r.kind AND c.name = r.name
  RETURNING r.i, c.id, r.uplink, r.downlink
), inserted AS (
  INSERT INTO counters (node, kind, name, uplink, downlink,
                        base_uplink, base_downlink, generation)
  SELECT $1, r.kind, r.name, r.uplink, r.downlink, r.base_uplink,
         r.base_downlink, r.generation
    FROM boxmeter_commit_rows r
   WHERE NOT EXISTS (SELECT 1 FROM updated u WHERE u.i = r.i)
  RETURNING id, uplink, downlink
), touched AS (
  SELECT id, uplink, downlink FROM updated
  UNION ALL
  SELECT id, uplink, downlink FROM inserted
)
INSERT INTO counter_hourly AS h (counter_id, hour, uplink, downlink)
SELECT id, timestamptz 'epoch' + $2::bigint * interval '1 second',
       uplink, downlink
  FROM touched
 WHERE uplink <> 0 OR downlink <> 0
ON CONFLICT (counter_id, hour) DO UPDATE SET
  uplink = CASE WHEN h.uplink > 9223372036854775807 -
                                GREATEST(excluded.uplink, 0)
                THEN 9223372036854775807 ELSE h.uplink + excluded.uplink END,
  downlink = CASE WHEN h.downlink > 9223372036854775807 -
                                    GREATEST(excluded.downlink, 0)
                  THEN 9223372036854775807
                  ELSE h.downlink + excluded.downlink END
)sql";

// The node's current instance (schema/0005_instance_identity.sql), stored
// with the baselines it qualifies. The guard has locked the row already.
constexpr const char* kStoreInstance = R"sql(
UPDATE nodes SET instance_boot_id = NULLIF($2, ''),
                 instance_generation = $3::bigint,
                 instance_start_lo_ms = $4::bigint,
                 instance_start_hi_ms = $5::bigint
 WHERE name = $1
)sql";

// Registers node $1 if new (LoadNode, TakeLease).
constexpr const char* kRegisterNode =
    "INSERT INTO nodes (name) VALUES ($1) ON CONFLICT (name) DO NOTHING";

// The node's writer lease (schema/0006_writer_lease.sql) in four statements.
// Takes or renews the lease of node $1 for holder $2, to lapse $3 ms from
// now: only if free, lapsed or already $2's. The token moves only when the
// holder changes. Under READ COMMITTED, a statement that waited for the
// row's lock (a commit in flight) judges the row as that commit left it.
constexpr const char* kTakeLease =
    "UPDATE nodes SET "
    "lease_token = CASE WHEN lease_holder = $2 THEN lease_token "
    "ELSE lease_token + 1 END, "
    "lease_holder = $2, "
    "lease_expires_at = clock_timestamp() + $3::bigint * interval '1 "
    "millisecond' "
    "WHERE name = $1 AND (lease_holder IS NULL OR lease_holder = $2 OR "
    "lease_expires_at <= clock_timestamp()) "
    "RETURNING lease_token";

// Who holds node $1's lease, its token, the milliseconds until it lapses by
// the database's clock (0 when lapsed or free), and the commit sequence.
constexpr const char* kReadLease =
    "SELECT lease_holder, lease_token, coalesce(greatest(0, floor(extract("
    "epoch FROM lease_expires_at - clock_timestamp()) * 1000)), 0)::bigint, "
    "commit_seq FROM nodes WHERE name = $1";

// Releases node $1's lease if holder $3 still holds it with token $2. The
// token stays, so the next holder's is larger.
constexpr const char* kReleaseLease =
    "UPDATE nodes SET lease_holder = NULL, lease_expires_at = NULL "
    "WHERE name = $1 AND lease_token = $2::bigint AND lease_holder = $3";

// A commit's guard: moves node $1's sequence from $2 only while holder $4
// holds the lease with token $3, and renews the lease to lapse $5 ms from
// now (never earlier than it already would).
constexpr const char* kCommitGuard =
    "UPDATE nodes SET commit_seq = commit_seq + 1, last_commit_at = now(), "
    "lease_expires_at = greatest(lease_expires_at, clock_timestamp() + "
    "$5::bigint * interval '1 millisecond') "
    "WHERE name = $1 AND commit_seq = $2::bigint AND lease_token = $3::bigint "
    "AND lease_holder = $4";

// schema/0002_generator.sql: what boxmeter-gen would read for node $1.
constexpr const char* kUsersFingerprint = "SELECT users_fingerprint($1)";

// schema/0013_event_delivery.sql: the delivery lease for node $1 for $3 ms,
// and while held, the first $2 undelivered usage events.
constexpr const char* kClaimEvents =
    "SELECT id, event::text FROM claim_usage_events("
    "$1, $2, $3::bigint * interval '1 millisecond')";
constexpr const char* kMarkEvent =
    "SELECT mark_usage_event_delivered("
    "$1, $2, $3::bigint * interval '1 millisecond')";

// What to do when delivering events fails because the schema lacks them.
Status WithEventsHint(Status status) {
  if (status.message().find("SQLSTATE 42883") == std::string::npos) {
    return status;
  }
  return Status::Error(
      status.message() +
      "; hooks.on_event needs schema/0013_event_delivery.sql: "
      "run boxmeter-collector --migrate as the schema's owner");
}

// A counter's key without a copy of its name, to find duplicates in a batch.
struct KeyView {
  CounterKind kind;
  std::string_view name;
  bool operator==(const KeyView& other) const = default;
};

struct KeyViewHash {
  size_t operator()(const KeyView& key) const noexcept {
    return std::hash<std::string_view>()(key.name) * 3 +
           static_cast<size_t>(key.kind);
  }
};

// A btree entry must fit in a third of a page (about 2.7 kB, after
// compression), so UNIQUE (node, kind, name) refuses a long name that does
// not compress well. Shorter names always fit.
constexpr size_t kSurelyIndexableName = 2000;

// Drops from `rows`, with a warning each, the names the counters' indexes
// cannot hold: one would fail its batch and every later one, blocking the
// node. Only names past kSurelyIndexableName are tried, each under a
// savepoint against a temporary table with the same unique index.
void LeaveOutUnindexable(pqxx::work& tx, const std::string& node,
                         std::vector<const CommitRow*>* rows) {
  auto long_name = [](const CommitRow* row) {
    return row->key.name.size() > kSurelyIndexableName;
  };
  if (std::none_of(rows->begin(), rows->end(), long_name)) return;
  tx.exec(
      "CREATE TEMP TABLE boxmeter_name_probe (node text, kind text, name "
      "text, UNIQUE (node, kind, name)) ON COMMIT DROP");
  std::erase_if(*rows, [&](const CommitRow* row) {
    if (!long_name(row)) return false;
    // A savepoint by hand: pqxx 6's subtransaction leaves the transaction
    // aborted after a failed statement.
    tx.exec("SAVEPOINT boxmeter_name_probe");
    try {
      tx.exec_params("INSERT INTO boxmeter_name_probe VALUES ($1, $2, $3)",
                     node, std::string(CounterKindName(row->key.kind)),
                     row->key.name);
      tx.exec("ROLLBACK TO SAVEPOINT boxmeter_name_probe");
      return false;
    } catch (const pqxx::sql_error& e) {
      if (e.sqlstate() != "54000") throw;  // program_limit_exceeded
      tx.exec("ROLLBACK TO SAVEPOINT boxmeter_name_probe");
      LogWarn(
          "left out {} counter whose name is {} bytes long (it starts {}): "
          "PostgreSQL cannot index a name that long; its traffic is not "
          "recorded",
          CounterKindName(row->key.kind), row->key.name.size(),
          QuotedText(row->key.name, 40));
      return true;
    }
  });
}

// Start of the UTC hour that contains `ms`, in seconds since the epoch.
int64_t HourStartSeconds(int64_t ms) {
  int64_t hour = ms / 3'600'000;
  if (ms % 3'600'000 < 0) --hour;  // floor, also before 1970
  return hour * 3600;
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Server notices (e.g. "relation already exists, skipping") go to the debug
// log instead of libpq's default, a raw line on stderr.
class NoticeLogger : public pqxx::errorhandler {
 public:
  explicit NoticeLogger(pqxx::connection_base& connection)
      : pqxx::errorhandler(connection) {}
  bool operator()(const char message[]) noexcept override {
    try {
      LogDebug("postgresql: {}", PgErrorText(message, ""));
    } catch (...) {
    }
    return false;  // handled: do not pass on to the default printer
  }
};

// The lease as a row of kReadLease has it: holder, token, ms left.
LeaseState LeaseFromRow(const pqxx::row& row) {
  LeaseState lease;
  if (!row[0].is_null()) lease.holder = row[0].as<std::string>();
  lease.token = row[1].as<int64_t>();
  lease.expires_in = std::chrono::milliseconds(row[2].as<int64_t>());
  return lease;
}

}  // namespace

struct PgStore::Connection {
  explicit Connection(const std::string& url) : pq(url), notices(pq) {
    // Counter names are UTF-8 (protobuf strings) whatever the environment
    // says; PGCLIENTENCODING must not reinterpret them.
    pq.set_client_encoding("UTF8");
  }
  pqxx::connection pq;
  NoticeLogger notices;  // declared after pq: unregisters before it closes
};

PgStore::PgStore(std::string url, std::string node, std::string lease_holder)
    : url_(std::move(url)),
      redacted_url_(RedactUrl(url_)),
      node_(std::move(node)),
      lease_holder_(std::move(lease_holder)) {}

PgStore::~PgStore() = default;

Status PgStore::Failed(const std::string& what, const std::exception& e) {
  // After any failure the connection may be broken or mid-transaction;
  // a fresh one is cheap next to a poll interval and always sound.
  bool broken = dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr ||
                (connection_ && !connection_->pq.is_open());
  connection_.reset();
  std::string where = what + " on PostgreSQL " + redacted_url_ + ": ";
  if (broken) {
    return Status::Unavailable(
        where + "connection lost or refused (" + PgErrorText(e.what(), url_) +
        "); is the server up and database.url right? The next call "
        "reconnects");
  }
  std::string message = where + PgErrorText(e.what(), url_);
  if (auto* sql = dynamic_cast<const pqxx::sql_error*>(&e)) {
    if (!sql->sqlstate().empty())
      message += " [SQLSTATE " + sql->sqlstate() + "]";
  }
  return Status::Error(message);
}

Status PgStore::Connect() {
  if (connection_ && connection_->pq.is_open()) return Status::Ok();
  connection_.reset();
  try {
    connection_ = std::make_unique<Connection>(WithConnectionDefaults(url_));
    return Status::Ok();
  } catch (const std::exception& e) {
    return Failed("cannot connect for node '" + node_ + "'", e);
  }
}

Status PgStore::Migrate() {
  if (Status status = Connect(); !status.ok()) return status;
  std::string current = "taking the migration lock";
  // Every step is one transaction that first takes the migration lock with
  // pg_advisory_xact_lock: it ends with the transaction, so nothing
  // outlives one, and migrating works through a transaction-pooling pooler
  // (a session lock would stay on whichever server session took it).
  const std::string lock =
      "SELECT pg_advisory_xact_lock(" + std::to_string(kMigrationLockKey) + ")";
  try {
    pqxx::connection& pq = connection_->pq;
    std::set<std::string, std::less<>> applied;
    {
      pqxx::work tx(pq);
      tx.exec(lock);
      current = "creating schema_migrations";
      // Only when missing: even CREATE TABLE IF NOT EXISTS needs the right
      // to create in the schema, which a collector connected as
      // boxmeter_collector (schema/0004_roles.sql) does not have.
      if (tx.exec("SELECT to_regclass('schema_migrations') IS NULL")[0][0]
              .as<bool>()) {
        tx.exec(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "name text PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())");
      }
      for (const pqxx::row& row :
           tx.exec("SELECT name FROM schema_migrations")) {
        applied.insert(row[0].as<std::string>());
      }
      tx.commit();
    }
    std::set<std::string_view> known;
    for (const Migration& migration : EmbeddedMigrations()) {
      known.insert(migration.name);
      if (applied.count(migration.name) > 0) continue;
      current = "applying migration " + std::string(migration.name);
      pqxx::work tx(pq);
      tx.exec(lock);
      // Another collector may have applied it since the list was read.
      if (!tx.exec_params("SELECT 1 FROM schema_migrations WHERE name = $1",
                          std::string(migration.name))
               .empty()) {
        tx.commit();
        continue;
      }
      tx.exec(std::string(migration.sql));
      // Each file records itself too (so it applies with plain psql);
      // this covers one that does not.
      tx.exec_params(
          "INSERT INTO schema_migrations (name) VALUES ($1) "
          "ON CONFLICT (name) DO NOTHING",
          std::string(migration.name));
      tx.commit();
      LogInfo("applied migration {} to {}", migration.name, redacted_url_);
    }
    for (const std::string& name : applied) {
      if (known.count(name) == 0) {
        LogWarn(
            "{} has migration {}, which this boxmeter does not know: the "
            "database was migrated by a newer version; upgrade this one",
            redacted_url_, name);
      }
    }
    return Status::Ok();
  } catch (const pqxx::insufficient_privilege& e) {
    return Status::Error(
        Failed(current, e).message() +
        "; migrations create and grant, so run `boxmeter-collector "
        "--migrate` connected as the schema's owner (or a superuser), then "
        "start the collector as its usual role");
  } catch (const std::exception& e) {
    return Failed(current, e);
  }
}

Status PgStore::GrantNode(const std::string& role) {
  if (Status status = Connect(); !status.ok()) return status;
  try {
    pqxx::work tx(connection_->pq);
    tx.exec_params("SELECT grant_node($1, $2)", node_, role);
    tx.commit();
    return Status::Ok();
  } catch (const std::exception& e) {
    // grant_node's own messages say what to do (no such role, not a member
    // of boxmeter_collector); Failed scrubs them like every other.
    return Failed("granting node " + node_ + " to " + role, e);
  }
}

Status PgStore::LoadNode(NodeState* out) {
  if (Status status = Connect(); !status.ok()) return status;
  try {
    pqxx::connection& pq = connection_->pq;
    {
      pqxx::work tx(pq);
      tx.exec_params(kRegisterNode, node_);
      tx.commit();
    }
    // One snapshot for the sequence and the baselines, so they agree even
    // if another writer commits meanwhile.
    pqxx::transaction<pqxx::repeatable_read, pqxx::read_only> tx(pq);
    NodeState state;
    pqxx::row node = tx.exec_params1(
        "SELECT commit_seq, coalesce(instance_boot_id, ''), "
        "instance_generation, coalesce(instance_start_lo_ms, 0), "
        "coalesce(instance_start_hi_ms, 0) FROM nodes WHERE name = $1",
        node_);
    state.commit_seq = node[0].as<int64_t>();
    state.instance.boot_id = node[1].as<std::string>();
    state.instance.generation = node[2].as<int64_t>();
    state.instance.start = {node[3].as<int64_t>(), node[4].as<int64_t>()};
    pqxx::result rows = tx.exec_params(
        "SELECT kind, name, base_uplink, base_downlink, generation, "
        "uplink, downlink FROM counters WHERE node = $1",
        node_);
    state.baselines.reserve(rows.size());
    state.totals.reserve(rows.size());
    for (const pqxx::row& row : rows) {
      std::optional<CounterKind> kind = ParseCounterKind(row[0].c_str());
      if (!kind) continue;  // the table's CHECK allows only known kinds
      Baseline baseline;
      baseline.key = {*kind, std::string(row[1].c_str(), row[1].size())};
      baseline.values = {row[2].as<int64_t>(), row[3].as<int64_t>()};
      baseline.generation = row[4].as<int64_t>();
      state.totals.push_back(CounterTotal{
          baseline.key, {row[5].as<int64_t>(), row[6].as<int64_t>()}});
      state.baselines.push_back(std::move(baseline));
    }
    tx.commit();
    *out = std::move(state);
    return Status::Ok();
  } catch (const std::exception& e) {
    Status status = Failed("loading node '" + node_ + "'", e);
    // schema/0008_hardening.sql: a collector's login writes only the nodes
    // the schema's owner granted it.
    if (std::string_view(e.what()).find("row-level security") !=
        std::string_view::npos) {
      return Status::Error(status.message() +
                           "; this login may not write node '" + node_ +
                           "': have the schema's owner run SELECT "
                           "grant_node('" +
                           node_ + "', '<this login role>')");
    }
    return status;
  }
}

CommitResult PgStore::Commit(const CommitBatch& batch) {
  std::string what = "commit of " + std::to_string(batch.rows.size()) +
                     " counters for node '" + node_ + "'";
  // Checked before anything is sent: a name PostgreSQL cannot store would
  // fail the batch, and a key twice would be applied once by UPDATE ... FROM.
  std::vector<const CommitRow*> rows;
  rows.reserve(batch.rows.size());
  std::unordered_set<KeyView, KeyViewHash> keys;
  keys.reserve(batch.rows.size());
  for (const CommitRow& row : batch.rows) {
    if (!IsUtf8WithoutNul(row.key.name)) {
      LogWarn(
          "left out {} counter named {:?}: PostgreSQL cannot store that name "
          "(not UTF-8 or contains NUL); its traffic is not recorded",
          CounterKindName(row.key.kind), row.key.name);
      continue;
    }
    if (!keys.insert({row.key.kind, row.key.name}).second) {
      return {CommitOutcome::kNotApplied,
              Status::Invalid(what + ": counter " +
                              std::string(CounterKindName(row.key.kind)) +
                              " '" + row.key.name +
                              "' appears twice in one batch (a bug)")};
    }
    rows.push_back(&row);
  }

  if (Status status = Connect(); !status.ok()) {
    return {CommitOutcome::kNotApplied, status};
  }
  bool commit_sent = false;
  try {
    pqxx::connection& pq = connection_->pq;
    pqxx::work tx(pq);
    pqxx::result bumped = tx.exec_params(
        kCommitGuard, node_, batch.expected_seq, batch.lease_token,
        lease_holder_, std::max<int64_t>(0, batch.lease_ttl.count()));
    if (bumped.affected_rows() == 0) {
      pqxx::result actual = tx.exec_params(kReadLease, node_);
      tx.abort();
      if (!actual.empty()) {
        LeaseState now = LeaseFromRow(actual[0]);
        if (now.holder != lease_holder_ || now.token != batch.lease_token) {
          return {
              CommitOutcome::kLeaseLost,
              Status::Invalid(
                  what + " on PostgreSQL " + redacted_url_ + " not applied: " +
                  LeaseLost(node_, lease_holder_, batch.lease_token, now))};
        }
      }
      std::string found =
          actual.empty() ? "no such node in table nodes (was it deleted?)"
                         : "the database has " + actual[0][3].as<std::string>();
      return {CommitOutcome::kNotApplied,
              Status::Invalid(
                  what + " on PostgreSQL " + redacted_url_ +
                  " not applied: expected commit sequence " +
                  std::to_string(batch.expected_seq) + ", " + found +
                  "; is another collector running with node: " + node_ +
                  "? The node's state must be reloaded from the database")};
    }
    const InstanceIdentity& instance = batch.instance;
    tx.exec_params(kStoreInstance, node_, instance.boot_id, instance.generation,
                   instance.start.lo_ms, instance.start.hi_ms);
    LeaveOutUnindexable(tx, node_, &rows);
    if (!rows.empty()) {
      tx.exec(kCreateCommitTable);
      pqxx::stream_to stream(tx, std::string(kCommitTable),
                             std::vector<std::string>{
                                 "i", "kind", "name", "uplink", "downlink",
                                 "base_uplink", "base_downlink", "generation"});
      int64_t i = 0;
      for (const CommitRow* row : rows) {
        stream << std::make_tuple(
            i++, std::string(CounterKindName(row->key.kind)), row->key.name,
            row->delta.uplink, row->delta.downlink, row->baseline.uplink,
            row->baseline.downlink, row->generation);
      }
      stream.complete();
      // Without statistics the planner guesses the table's size and may
      // hash a whole large table to update a few rows of it, or the reverse.
      tx.exec("ANALYZE " + std::string(kCommitTable));
      // The node's counters are read by every commit, so they are cached:
      // priced at the default (a disk's) random_page_cost, index probes lose
      // to scanning every counter even when a batch holds 2% of them. And
      // the planner underestimates the join on (kind, name) (it takes the
      // two columns for independent), then walks the whole unique index in
      // a merge join: a third slower than a hash join or index probes for
      // a small batch, 8% faster only when a batch holds half the node.
      tx.exec("SET LOCAL random_page_cost = 1.1");
      tx.exec("SET LOCAL enable_mergejoin = off");
      int64_t observed_ms =
          batch.observed_at_ms > 0 ? batch.observed_at_ms : NowMs();
      tx.exec_params(kApplyCommit, node_, HourStartSeconds(observed_ms));
    }
    // After the traffic is added, so a quota this commit crossed shows.
    std::string users_fingerprint;
    if (batch.read_users_fingerprint) {
      users_fingerprint =
          tx.exec_params1(kUsersFingerprint, node_)[0].as<std::string>();
    }
    commit_sent = true;
    tx.commit();
    return {CommitOutcome::kApplied, Status::Ok(), users_fingerprint};
  } catch (const std::exception& e) {
    bool in_doubt =
        commit_sent &&
        (dynamic_cast<const pqxx::in_doubt_error*>(&e) != nullptr ||
         dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr ||
         (connection_ && !connection_->pq.is_open()));
    Status status = Failed(what, e);
    if (in_doubt) {
      return {CommitOutcome::kUnknown,
              Status::Unavailable(
                  what + " on PostgreSQL " + redacted_url_ +
                  ": the connection failed during COMMIT, so whether it "
                  "applied is unknown; the node's commit sequence tells")};
    }
    return {CommitOutcome::kNotApplied, status};
  }
}

Status PgStore::TakeLease(std::chrono::milliseconds ttl, LeaseState* out) {
  if (ttl.count() <= 0 || lease_holder_.empty()) {
    return Status::Invalid(
        "taking the writer lease of node '" + node_ + "' for " +
        std::to_string(ttl.count()) + " ms as holder '" + lease_holder_ +
        "': the lease needs a positive time to live and a holder name (a "
        "bug in the caller)");
  }
  if (Status status = Connect(); !status.ok()) return status;
  try {
    pqxx::work tx(connection_->pq);
    LeaseState state;
    // Each statement sees what committed before it (READ COMMITTED), so a
    // retry sees a node registered or a lease released meanwhile.
    for (int attempt = 0; attempt < 3; ++attempt) {
      pqxx::result taken = tx.exec_params(kTakeLease, node_, lease_holder_,
                                          static_cast<int64_t>(ttl.count()));
      if (!taken.empty()) {
        state.held = true;
        state.token = taken[0][0].as<int64_t>();
        state.holder = lease_holder_;
        state.expires_in = ttl;  // from the UPDATE's clock_timestamp()
        break;
      }
      pqxx::result now = tx.exec_params(kReadLease, node_);
      if (now.empty()) {
        tx.exec_params(kRegisterNode, node_);
        continue;
      }
      state = LeaseFromRow(now[0]);
      // Released or lapsed between the two statements: try again.
      if (!state.holder.empty() && state.expires_in.count() > 0) break;
    }
    tx.commit();
    *out = std::move(state);
    return Status::Ok();
  } catch (const std::exception& e) {
    return Failed("taking the writer lease of node '" + node_ + "'", e);
  }
}

Status PgStore::ReleaseLease(int64_t token) {
  if (Status status = Connect(); !status.ok()) return status;
  try {
    pqxx::work tx(connection_->pq);
    tx.exec_params(kReleaseLease, node_, token, lease_holder_);
    tx.commit();
    return Status::Ok();
  } catch (const std::exception& e) {
    return Failed("releasing the writer lease of node '" + node_ + "' (token " +
                      std::to_string(token) + ")",
                  e);
  }
}

Status PgStore::EnsureHistoryPartitions(int days_ahead, int* created) {
  *created = 0;
  if (Status status = Connect(); !status.ok()) return status;
  try {
    pqxx::work tx(connection_->pq);
    *created = tx.exec_params1("SELECT ensure_history_partitions($1::integer)",
                               days_ahead)[0]
                   .as<int>();
    tx.commit();
    return Status::Ok();
  } catch (const std::exception& e) {
    return Failed("creating the hourly history's daily partitions " +
                      std::to_string(days_ahead) +
                      " days ahead (ensure_history_partitions)",
                  e);
  }
}

Status PgStore::PruneHistory(std::chrono::hours retention,
                             std::chrono::milliseconds budget,
                             PruneResult* out) {
  *out = PruneResult{};
  if (Status status = Connect(); !status.ok()) return status;
  std::string what = "deleting hourly history older than " +
                     std::to_string(retention.count()) + "h";
  auto deadline = std::chrono::steady_clock::now() + budget;
  // One collector at a time, per transaction: the lock ends with it, so
  // nothing outlives one and pruning works through a transaction-pooling
  // pooler. Taken: another collector is at it.
  const std::string lock = "SELECT pg_try_advisory_xact_lock(" +
                           std::to_string(PgStore::kPruneLockKey) + ")";
  try {
    pqxx::connection& pq = connection_->pq;
    {
      // Whole days first: dropping a partition costs the same whatever it
      // holds.
      pqxx::work tx(pq);
      if (!tx.exec(lock)[0][0].as<bool>()) return Status::Ok();
      out->partitions_dropped =
          tx.exec_params1(
                "SELECT prune_history(now() - $1::bigint * "
                "interval '1 hour')",
                static_cast<int64_t>(retention.count()))[0]
              .as<int64_t>();
      tx.commit();
    }
    int64_t from = 0, cutoff = 0;
    {
      // The cutoff is fixed once, so the loop ends even under new traffic.
      pqxx::read_transaction tx(pq);
      pqxx::row row = tx.exec_params1(
          "SELECT floor(extract(epoch FROM min(hour)))::bigint, "
          "floor(extract(epoch FROM now()))::bigint - $1::bigint * 3600 "
          "FROM counter_hourly",
          static_cast<int64_t>(retention.count()));
      tx.commit();
      if (!row[0].is_null()) {  // NULL: no history at all
        from = row[0].as<int64_t>();
        cutoff = row[1].as<int64_t>();
      }
    }
    while (from < cutoff) {
      pqxx::work tx(pq);
      if (!tx.exec(lock)[0][0].as<bool>()) break;
      pqxx::row row =
          tx.exec_params1(kPruneBatch, from, cutoff, kPruneBatchRows);
      tx.commit();
      out->deleted += row[0].as<int64_t>();
      from = row[1].as<int64_t>();
      if (row[0].as<int64_t>() < kPruneBatchRows) break;
      if (std::chrono::steady_clock::now() >= deadline) {
        out->done = false;
        break;
      }
    }
    // Then the weekly sums top_users reads (schema/0028_weekly_sums.sql):
    // one day per transaction, at least one per call, so that a long
    // retention backlog does not hold them back.
    what = "summing hourly history into counter_weekly (roll_history_day)";
    out->summed = false;
    do {
      pqxx::work tx(pq);
      if (!tx.exec(lock)[0][0].as<bool>()) break;
      pqxx::row row = tx.exec1("SELECT roll_history_day()");
      tx.commit();
      if (row[0].is_null()) {
        out->summed = true;
        break;
      }
      ++out->days_summed;
    } while (std::chrono::steady_clock::now() < deadline);
    return Status::Ok();
  } catch (const std::exception& e) {
    return Failed(what, e);
  }
}

Status PgStore::ReadCommitSeq(int64_t* seq) {
  if (Status status = Connect(); !status.ok()) return status;
  try {
    pqxx::read_transaction tx(connection_->pq);
    pqxx::result rows =
        tx.exec_params("SELECT commit_seq FROM nodes WHERE name = $1", node_);
    tx.commit();
    if (rows.empty()) {
      return Status::Error("node '" + node_ + "' is not in table nodes of " +
                           redacted_url_ +
                           " (deleted while the collector ran?); it is "
                           "registered again on the next load");
    }
    *seq = rows[0][0].as<int64_t>();
    return Status::Ok();
  } catch (const std::exception& e) {
    return Failed("reading the commit sequence of node '" + node_ + "'", e);
  }
}

Status PgStore::ReadUsersFingerprint(std::string* fingerprint) {
  if (Status status = Connect(); !status.ok()) return status;
  try {
    pqxx::read_transaction tx(connection_->pq);
    *fingerprint =
        tx.exec_params1(kUsersFingerprint, node_)[0].as<std::string>();
    tx.commit();
    return Status::Ok();
  } catch (const std::exception& e) {
    return Failed("reading the users fingerprint of node '" + node_ + "'", e);
  }
}

Status PgStore::ReadUndeliveredEvents(int max_events,
                                      std::chrono::milliseconds lease,
                                      std::vector<UsageEvent>* out) {
  out->clear();
  if (Status status = Connect(); !status.ok()) return status;
  try {
    pqxx::work tx(connection_->pq);
    pqxx::result rows = tx.exec_params(kClaimEvents, node_, max_events,
                                       static_cast<int64_t>(lease.count()));
    tx.commit();
    for (const pqxx::row& row : rows) {
      out->push_back({row[0].as<int64_t>(), row[1].as<std::string>()});
    }
    return Status::Ok();
  } catch (const std::exception& e) {
    out->clear();
    return WithEventsHint(Failed(
        "claiming the usage events to deliver for node '" + node_ + "'", e));
  }
}

Status PgStore::MarkEventDelivered(int64_t id,
                                   std::chrono::milliseconds lease) {
  if (Status status = Connect(); !status.ok()) return status;
  try {
    pqxx::work tx(connection_->pq);
    tx.exec_params1(kMarkEvent, node_, id, static_cast<int64_t>(lease.count()));
    tx.commit();
    return Status::Ok();
  } catch (const std::exception& e) {
    return WithEventsHint(
        Failed("marking usage event " + std::to_string(id) + " delivered", e));
  }
}

}  // namespace boxmeter
