// Status: the outcome of an operation at an I/O boundary, in the style of
// leveldb. Adapters catch their library's exceptions and return a Status, so
// no pqxx, yaml-cpp or gRPC exception crosses the poll loop.
#pragma once

#include <string>
#include <utility>

namespace boxmeter {

class Status {
 public:
  enum class Code {
    kOk,
    kUnavailable,    // the peer cannot be reached now; retrying may help
    kUnimplemented,  // the peer does not offer the service at all
    kDeadline,       // the peer did not answer in time
    kInvalid,        // the input is wrong; retrying will not help
    kError,          // anything else
  };

  Status() = default;
  static Status Ok() { return Status(); }
  static Status Unavailable(std::string m) { return {Code::kUnavailable, m}; }
  static Status Unimplemented(std::string m) {
    return {Code::kUnimplemented, m};
  }
  static Status Deadline(std::string m) { return {Code::kDeadline, m}; }
  static Status Invalid(std::string m) { return {Code::kInvalid, m}; }
  static Status Error(std::string m) { return {Code::kError, m}; }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  Status(Code code, std::string message)
      : code_(code), message_(std::move(message)) {}

  Code code_ = Code::kOk;
  std::string message_;
};

}  // namespace boxmeter
