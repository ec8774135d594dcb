// NodeRowLock: one libpqxx connection with a transaction left open.
#include "node_row_lock.h"

#include <pqxx/pqxx>
#include <stdexcept>

namespace boxmeter::testing {

struct NodeRowLock::Session {
  explicit Session(const std::string& url)
      : connection(url), transaction(connection) {}
  pqxx::connection connection;
  pqxx::work transaction;
};

NodeRowLock::NodeRowLock(const std::string& database_url,
                         const std::string& node) {
  try {
    session_ = std::make_unique<Session>(database_url);
    pqxx::result rows = session_->transaction.exec(
        "SELECT name FROM nodes WHERE name = " +
        session_->transaction.quote(node) + " FOR UPDATE");
    if (rows.size() != 1) {
      throw std::runtime_error("no row for it in nodes");
    }
  } catch (const std::exception& e) {
    session_.reset();
    throw std::runtime_error("NodeRowLock: cannot lock node \"" + node +
                             "\": " + e.what());
  }
}

NodeRowLock::~NodeRowLock() { Release(); }

void NodeRowLock::Release() {
  if (!session_) return;
  try {
    session_->transaction.abort();
  } catch (const std::exception&) {
    // The session is gone either way: closing it releases the lock.
  }
  session_.reset();
}

}  // namespace boxmeter::testing
