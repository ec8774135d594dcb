// deploy/hooks/on-event-webhook.sh against a local HTTP receiver
// (tests/support/webhook_receiver.py on 127.0.0.1): the event's JSON is
// posted as it came, with its id and an HMAC-SHA256 signature that openssl
// verifies, for a short secret and one longer than SHA-256's block; a
// receiver that refuses, and a missing secret, make it fail with a message.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "process.h"

namespace boxmeter::testing {
namespace {

using namespace std::chrono_literals;

const std::string kScript =
    std::string(BOXMETER_SOURCE_DIR) + "/deploy/hooks/on-event-webhook.sh";
const std::string kReceiver =
    std::string(BOXMETER_SOURCE_DIR) + "/tests/support/webhook_receiver.py";

// Debian's interpreter when there is one (not a version manager's shim).
std::string Python() {
  return std::ifstream("/usr/bin/python3").good() ? "/usr/bin/python3"
                                                  : "python3";
}

void Write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

class EventWebhookTest : public ::testing::Test {
 protected:
  // Starts a receiver answering `status`; its URL.
  std::string Receive(int status) {
    Process::Options options;
    options.argv = {Python(), kReceiver, out_, std::to_string(status)};
    receiver_ = Process::Start(options);
    EXPECT_TRUE(
        WaitUntil([&] { return !ReadFile(out_ + ".port").empty(); }, 10s))
        << "the receiver did not start";
    return "http://127.0.0.1:" + ReadFile(out_ + ".port") + "/events";
  }

  // Runs the script with `event` on stdin; its exit code, output in *output.
  int Post(const std::string& url, const std::string& secret,
           const std::string& event, std::string* output) {
    Write(dir_.path() + "/event.json", event);
    if (!secret.empty()) Write(dir_.path() + "/secret", secret);
    Process::Options options;
    options.argv = {"/bin/sh", "-c",
                    "'" + kScript + "' < '" + dir_.path() + "/event.json'"};
    options.env = {{"BOXMETER_WEBHOOK_URL", url},
                   {"BOXMETER_WEBHOOK_SECRET_FILE", dir_.path() + "/secret"},
                   {"BOXMETER_EVENT_ID", ""}};
    return RunCommand(options, 30s, output);
  }

  // The HMAC-SHA256 of the received body as openssl computes it.
  std::string OpensslSignature(const std::string& key) {
    Process::Options options;
    options.argv = {"/bin/sh", "-c",
                    "openssl dgst -sha256 -r -hmac \"$KEY\" < '" + out_ +
                        ".body' | cut -d' ' -f1 | tr -d '\\n'"};
    options.env = {{"KEY", key}};
    std::string hex;
    EXPECT_EQ(RunCommand(options, 30s, &hex), 0) << hex;
    return hex;
  }

  TempDir dir_;
  std::string out_ = dir_.path() + "/request";
  std::unique_ptr<Process> receiver_;
};

TEST_F(EventWebhookTest, PostsTheEventSignedWithTheSecret) {
  std::string url = Receive(200);
  const std::string event =
      "{\"at\": \"2026-11-27T12:00:03.52+00:00\", \"id\": 42, \"kind\": "
      "\"threshold\", \"user\": \"alice\", \"threshold\": 80}";
  std::string output;
  ASSERT_EQ(Post(url, "s3cret\n", event, &output), 0) << output;
  EXPECT_EQ(ReadFile(out_ + ".body"), event);
  std::string headers = ReadFile(out_ + ".headers");
  EXPECT_NE(headers.find("X-Boxmeter-Event-Id: 42\n"), std::string::npos)
      << headers;
  EXPECT_NE(headers.find("Content-Type: application/json\n"), std::string::npos)
      << headers;
  // The secret without the file's final newline.
  std::string hex = OpensslSignature("s3cret");
  EXPECT_EQ(hex.size(), 64u) << hex;
  EXPECT_NE(headers.find("X-Boxmeter-Signature: sha256=" + hex + "\n"),
            std::string::npos)
      << headers;

  // A secret longer than SHA-256's 64-byte block is hashed first (RFC 2104).
  const std::string long_secret(100, 'k');
  ASSERT_EQ(Post(url, long_secret, event, &output), 0) << output;
  headers = ReadFile(out_ + ".headers");
  EXPECT_NE(headers.find("X-Boxmeter-Signature: sha256=" +
                         OpensslSignature(long_secret) + "\n"),
            std::string::npos)
      << headers;
}

TEST_F(EventWebhookTest, ARefusalOrAMissingSecretFailsSayingWhy) {
  std::string url = Receive(500);
  std::string output;
  EXPECT_EQ(Post(url, "s3cret", "{\"id\": 7}", &output), 75);
  EXPECT_NE(output.find("answered HTTP 500 to usage event 7: answered 500; "
                        "the collector retries it"),
            std::string::npos)
      << output;

  output.clear();
  std::remove((dir_.path() + "/secret").c_str());
  EXPECT_EQ(Post(url, "", "{\"id\": 7}", &output), 78);
  EXPECT_NE(output.find("cannot read the secret file \"" + dir_.path() +
                        "/secret\" (BOXMETER_WEBHOOK_SECRET_FILE)"),
            std::string::npos)
      << output;
}

}  // namespace
}  // namespace boxmeter::testing
