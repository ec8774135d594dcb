#include "control_socket.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <fstream>
#include <future>
#include <thread>

#include "support/process.h"

namespace boxmeter {
namespace {

using namespace std::chrono_literals;
using testing::TempDir;

// A server on its own loop thread, answering flushes with `answer`.
class ControlSocketTest : public ::testing::Test {
 protected:
  ControlSocketTest() : path_(dir_.path() + "/collector.sock") {}
  ~ControlSocketTest() override {
    io_.stop();
    if (loop_.joinable()) loop_.join();
  }

  Status Serve(Status answer) {
    server_ = std::make_unique<ControlServer>(io_, path_, "edge-1",
                                              [this, answer](auto done) {
                                                ++flushes_;
                                                done(answer);
                                              });
    Status status = server_->Open();
    if (status.ok()) loop_ = std::thread([this] { io_.run(); });
    return status;
  }

  TempDir dir_;
  std::string path_;
  boost::asio::io_context io_;
  std::unique_ptr<ControlServer> server_;
  std::thread loop_;
  std::atomic<int> flushes_{0};
};

TEST_F(ControlSocketTest, FlushIsAnsweredOk) {
  ASSERT_TRUE(Serve(Status::Ok()).ok());
  Status status = RequestFlush(path_, "edge-1", 5s);
  EXPECT_TRUE(status.ok()) << status.message();
  EXPECT_EQ(flushes_, 1);
  struct stat st {};
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
}

TEST_F(ControlSocketTest, AFailedFlushSaysWhy) {
  ASSERT_TRUE(Serve(Status::Unavailable("the database is down")).ok());
  Status status = RequestFlush(path_, "edge-1", 5s);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("the database is down"), std::string::npos)
      << status.message();
}

TEST_F(ControlSocketTest, AnotherNodesFlushIsRefused) {
  ASSERT_TRUE(Serve(Status::Ok()).ok());
  Status status = RequestFlush(path_, "edge-2", 5s);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("\"edge-1\", not \"edge-2\""),
            std::string::npos)
      << status.message();
  EXPECT_EQ(flushes_, 0);
}

TEST_F(ControlSocketTest, NoCollectorIsAClearError) {
  Status status = RequestFlush(path_, "edge-1", 5s);
  EXPECT_EQ(status.code(), Status::Code::kUnavailable);
  EXPECT_NE(status.message().find(path_), std::string::npos)
      << status.message();
  EXPECT_NE(status.message().find("is boxmeter-collector running"),
            std::string::npos)
      << status.message();
}

TEST_F(ControlSocketTest, AStaleSocketIsReplaced) {
  // A socket file whose listener is gone, as a killed collector leaves it.
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::snprintf(address.sun_path, sizeof(address.sun_path), "%s",
                path_.c_str());
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)),
            0);
  close(fd);
  ASSERT_TRUE(Serve(Status::Ok()).ok());
  EXPECT_TRUE(RequestFlush(path_, "edge-1", 5s).ok());
}

TEST_F(ControlSocketTest, ALiveSocketIsNotTaken) {
  ASSERT_TRUE(Serve(Status::Ok()).ok());
  boost::asio::io_context other_io;
  ControlServer second(other_io, path_, "edge-1",
                       [](auto done) { done(Status::Ok()); });
  Status status = second.Open();
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("another running collector listens"),
            std::string::npos)
      << status.message();
}

TEST_F(ControlSocketTest, AFileThatIsNotASocketIsLeftAlone) {
  std::ofstream(path_) << "keep me";
  Status status = Serve(Status::Ok());
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("is not a socket"), std::string::npos)
      << status.message();
  EXPECT_EQ(testing::ReadFile(path_), "keep me");
}

TEST_F(ControlSocketTest, AMissingDirectorySaysWhatToDo) {
  path_ = dir_.path() + "/missing/collector.sock";
  Status status = Serve(Status::Ok());
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("RuntimeDirectory"), std::string::npos)
      << status.message();
}

TEST_F(ControlSocketTest, ASilentClientDoesNotBlockOthers) {
  ASSERT_TRUE(Serve(Status::Ok()).ok());
  int silent = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::snprintf(address.sun_path, sizeof(address.sun_path), "%s",
                path_.c_str());
  ASSERT_EQ(
      connect(silent, reinterpret_cast<sockaddr*>(&address), sizeof(address)),
      0);
  EXPECT_TRUE(RequestFlush(path_, "edge-1", 5s).ok());
  close(silent);
}

}  // namespace
}  // namespace boxmeter
