#include "sql_fixture.h"

#include <chrono>
#include <pqxx/pqxx>
#include <stdexcept>

namespace boxmeter::testing {
namespace {

// One line, so that messages read well in test output and substrings match
// whatever libpq's layout.
std::string OneLine(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '\n') {
      if (!out.empty() && out.back() != ' ') out += ' ';
    } else {
      out += c;
    }
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

std::string ResultText(const pqxx::result& result) {
  std::string out;
  for (const pqxx::row& row : result) {
    if (!out.empty()) out += '\n';
    for (pqxx::row::size_type i = 0; i < row.size(); ++i) {
      if (i > 0) out += '|';
      if (!row[i].is_null()) out += row[i].c_str();
    }
  }
  return out;
}

}  // namespace

Meter::Meter(const std::string& url, std::string node)
    : store_(url, node), node_(std::move(node)) {
  LeaseState lease;
  Status status = store_.TakeLease(kTestLeaseTtl, &lease);
  if (status.ok() && !lease.held) {
    status = Status::Error("node " + node_ + " is held by " + lease.holder);
  }
  if (!status.ok()) throw std::runtime_error(status.message());
  lease_token_ = lease.token;
  NodeState state;
  status = store_.LoadNode(&state);
  if (!status.ok()) throw std::runtime_error(status.message());
  seq_ = state.commit_seq;
  instance_ = state.instance;
  for (const Baseline& b : state.baselines) cumulative_[b.key] = b.values;
}

void Meter::Commit(const std::vector<Traffic>& traffic, int64_t observed_ms) {
  CommitBatch batch;
  batch.expected_seq = seq_;
  batch.observed_at_ms = observed_ms;
  batch.instance = instance_;
  batch.lease_token = lease_token_;
  // Traffic of one counter listed twice is one row, as in a snapshot.
  std::map<CounterKey, CounterValues> deltas;
  for (const Traffic& t : traffic) {
    CounterValues& delta = deltas[CounterKey{t.kind, t.name}];
    delta.uplink += t.uplink;
    delta.downlink += t.downlink;
  }
  std::map<CounterKey, CounterValues> next = cumulative_;
  for (const auto& [key, delta] : deltas) {
    CounterValues& total = next[key];
    total.uplink += delta.uplink;
    total.downlink += delta.downlink;
    batch.rows.push_back(CommitRow{key, delta, total, instance_.generation});
  }
  CommitResult result = store_.Commit(batch);
  if (result.outcome != CommitOutcome::kApplied) {
    throw std::runtime_error("commit for node " + node_ +
                             " failed: " + result.status.message());
  }
  cumulative_ = std::move(next);
  ++seq_;
}

void SqlTest::SetUp() {
  PgDatabaseTest::SetUp();
  if (HasFatalFailure()) return;
  // Tests lay out traffic by UTC day and compare with current_date.
  server().Query("postgres",
                 "ALTER DATABASE " + database() + " SET timezone = 'UTC'");
  PgStore store(Url(), "migrator");
  Status migrated = store.Migrate();
  ASSERT_TRUE(migrated.ok()) << migrated.message();
}

std::string SqlTest::Url(const std::string& user) const {
  return "postgresql://" + user +
         "@127.0.0.1:" + std::to_string(server().port()) + "/" + database();
}

std::string SqlTest::Query(const std::string& sql, const std::string& user) {
  return QueryAt(Url(user), sql);
}

std::string SqlTest::QueryAt(const std::string& url, const std::string& sql) {
  try {
    pqxx::connection connection(url);
    pqxx::work tx(connection);
    pqxx::result result = tx.exec(sql);
    tx.commit();
    return ResultText(result);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "at " << url << ": " << sql
                  << "\n  failed: " << OneLine(e.what());
    return "<error>";
  }
}

SqlError SqlTest::Error(const std::string& sql, const std::string& user) {
  try {
    pqxx::connection connection(Url(user));
    pqxx::work tx(connection);
    pqxx::result result = tx.exec(sql);
    tx.commit();
    ADD_FAILURE() << "as " << user << ": " << sql
                  << "\n  succeeded, but should have failed; it returned: "
                  << ResultText(result);
    return {};
  } catch (const pqxx::insufficient_privilege& e) {
    // libpqxx 6.4 throws this class without its SQLSTATE.
    return {"42501", OneLine(e.what())};
  } catch (const pqxx::sql_error& e) {
    return {e.sqlstate(), OneLine(e.what())};
  } catch (const std::exception& e) {
    ADD_FAILURE() << "as " << user << ": " << sql
                  << "\n  failed, but not in SQL: " << e.what();
    return {};
  }
}

Meter& SqlTest::meter(const std::string& node) {
  std::unique_ptr<Meter>& meter = meters_[node];
  if (!meter) meter = std::make_unique<Meter>(Url(), node);
  return *meter;
}

std::string SqlTest::CollectorLogin(const std::string& node) {
  std::string role = "meter_" + database();
  if (Query("SELECT count(*) FROM pg_roles WHERE rolname = '" + role + "'") ==
      "0") {
    Query("CREATE ROLE " + role + " LOGIN IN ROLE boxmeter_collector");
  }
  Query("SELECT grant_node('" + node + "', '" + role + "')");
  return role;
}

int64_t SqlTest::DayMs(int days, int hours) {
  using std::chrono::duration_cast;
  using std::chrono::milliseconds;
  auto now = std::chrono::system_clock::now();
  auto today = std::chrono::floor<std::chrono::days>(now);
  return duration_cast<milliseconds>(
             (today + std::chrono::days(days) + std::chrono::hours(hours))
                 .time_since_epoch())
      .count();
}

}  // namespace boxmeter::testing
