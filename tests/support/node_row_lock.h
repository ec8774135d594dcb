// Test support: another PostgreSQL session holding a node's row in `nodes`
// (SELECT ... FOR UPDATE), so every commit of that node's collector waits
// for it, as behind a long transaction of an operator or a stuck session.
#pragma once

#include <memory>
#include <string>

namespace boxmeter::testing {

class NodeRowLock {
 public:
  // Connects to `database_url` and locks the row of `node`. Throws
  // std::runtime_error naming the node when there is no such row or the
  // database does not answer.
  NodeRowLock(const std::string& database_url, const std::string& node);
  ~NodeRowLock();  // Release()

  NodeRowLock(const NodeRowLock&) = delete;
  NodeRowLock& operator=(const NodeRowLock&) = delete;

  // Ends the transaction (rolled back: it changed nothing) and the session.
  // Idempotent.
  void Release();

 private:
  struct Session;
  std::unique_ptr<Session> session_;
};

}  // namespace boxmeter::testing
