#include "grpc_stats_source.h"

#include <fmt/core.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <climits>
#include <condition_variable>
#include <mutex>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "config.h"  // IsLoopbackAddress
#include "safe_text.h"
#include "stats.grpc.pb.h"

namespace boxmeter {
namespace {

namespace api = v2ray::core::app::stats::command;

// Every traffic counter, in both dialects of the request: v2ray-core 4.x
// reads `pattern`, sing-box reads `patterns` (and some releases answer
// nothing at all when it is empty).
constexpr char kTrafficPattern[] = ">>>traffic>>>";

// gRPC's default backoff grows to two minutes: a sing-box that restarted
// would stay invisible for many polls. Until the backoff ends, calls fail at
// once; a flush retries for 4.5 s (collector.cc), past the longest backoff
// (2 s, and gRPC's 20% jitter). A reconnect a second or two to a local port
// costs nothing.
constexpr int kInitialReconnectBackoffMs = 1000;
constexpr int kMaxReconnectBackoffMs = 2000;

std::string_view CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    default:
      return "UNRECOGNIZED";
  }
}

// gRPC limits take an int; -1 means no limit.
int ClampMessageSize(int64_t bytes) {
  if (bytes <= 0) return -1;
  return bytes > INT_MAX ? INT_MAX : static_cast<int>(bytes);
}

}  // namespace

// What the source and its calls share. A call in flight keeps it alive, so
// gRPC's callbacks never touch a destroyed source.
//
// The channel must never be destroyed on one of gRPC's callback threads:
// destroying the last channel joins those threads, the current one included,
// and gRPC 1.51 then frees its callback queue twice (seen with
// AddressSanitizer). Calls hold the channel too (through their contexts), so
// the source counts them and drops the stub only after the last is gone.
struct GrpcStatsSource::Shared {
  std::string address;
  int64_t max_message_size = 0;
  HostClock clock;
  bool same_kernel = false;  // the address is a loopback one
  std::unique_ptr<api::StatsService::Stub> stub;

  std::mutex mu;
  std::condition_variable idle;
  std::shared_ptr<Call> active;  // the fetch in progress, until done starts
  int live_calls = 0;            // Call objects not yet destroyed
  grpc::ClientContext* current = nullptr;     // its RPC in flight, to cancel
  std::vector<std::thread::id> done_threads;  // threads running a done now
  bool closing = false;                       // the source is being destroyed
};

// One fetch: three RPCs chained by their completion callbacks. Each callback
// holds a reference, so the call lives until the last one has run.
class GrpcStatsSource::Call : public std::enable_shared_from_this<Call> {
 public:
  // Fetch has counted it in live_calls.
  Call(std::shared_ptr<Shared> shared, std::chrono::milliseconds timeout,
       Callback done)
      : registration_{std::move(shared)},
        shared_(registration_.shared.get()),
        timeout_(timeout),
        done_(std::move(done)) {
    query_request_.set_pattern(kTrafficPattern);
    query_request_.add_patterns(kTrafficPattern);
    query_request_.set_reset(false);
    query_request_.set_regexp(false);
  }

  void Start() {
    reply_.boot_id = shared_->clock.boot_id;
    reply_.same_kernel = shared_->same_kernel;
    StartSysStats(Stage::kBefore);
  }

  void Cancel() {
    // The context outlives this: it belongs to the call, and whoever calls
    // Cancel holds a reference to the call.
    grpc::ClientContext* context;
    {
      std::lock_guard lock(shared_->mu);
      context = shared_->current;
    }
    if (context != nullptr) context->TryCancel();
  }

 private:
  enum class Stage { kBefore, kAfter };

  // Prepares the context of the next RPC. Returns false, having finished the
  // fetch, when the source is being destroyed.
  bool Arm(grpc::ClientContext* context) {
    context->set_deadline(std::chrono::system_clock::now() + timeout_);
    {
      std::lock_guard lock(shared_->mu);
      if (!shared_->closing) {
        shared_->current = context;
        return true;
      }
    }
    Finish(Cancelled());
    return false;
  }

  void StartSysStats(Stage stage) {
    bool before = stage == Stage::kBefore;
    grpc::ClientContext* context = before ? &before_context_ : &after_context_;
    api::SysStatsResponse* response =
        before ? &before_response_ : &after_response_;
    if (!Arm(context)) return;
    int64_t sent_ms = shared_->clock.monotonic_ms();
    shared_->stub->async()->GetSysStats(
        context, &sys_request_, response,
        [self = shared_from_this(), stage, response,
         sent_ms](grpc::Status status) {
          self->OnSysStats(stage, sent_ms, *response, status);
        });
  }

  void OnSysStats(Stage stage, int64_t sent_ms,
                  const api::SysStatsResponse& response,
                  const grpc::Status& status) {
    int64_t received_ms = shared_->clock.monotonic_ms();
    if (!status.ok()) return Finish(Failure(status, "GetSysStats"));
    UptimeSample sample{.sent_ms = sent_ms,
                        .received_ms = received_ms,
                        .uptime_s = response.uptime()};
    if (stage == Stage::kBefore) {
      reply_.before = sample;
      StartQuery();
    } else {
      reply_.after = sample;
      Finish(Status::Ok());
    }
  }

  void StartQuery() {
    if (!Arm(&query_context_)) return;
    shared_->stub->async()->QueryStats(
        &query_context_, &query_request_, &query_response_,
        [self = shared_from_this()](grpc::Status status) {
          self->OnQuery(status);
        });
  }

  void OnQuery(const grpc::Status& status) {
    if (!status.ok()) return Finish(Failure(status, "QueryStats"));
    reply_.answered_wall_ms = shared_->clock.wall_ms();
    reply_.stats.reserve(query_response_.stat_size());
    for (api::Stat& stat : *query_response_.mutable_stat()) {
      reply_.stats.push_back(RawStat{.name = std::move(*stat.mutable_name()),
                                     .value = stat.value()});
    }
    // A million counters are tens of megabytes: free them now.
    api::QueryStatsResponse().Swap(&query_response_);
    StartSysStats(Stage::kAfter);
  }

  // The fetch is over once done starts: done may start the next one.
  void Finish(Status status) {
    std::shared_ptr<Call> self;  // released after the lock, not under it
    {
      std::lock_guard lock(shared_->mu);
      self = std::move(shared_->active);
      shared_->current = nullptr;
      shared_->done_threads.push_back(std::this_thread::get_id());
    }
    StatsReply reply;
    if (status.ok()) reply = std::move(reply_);
    Callback done = std::move(done_);
    done(std::move(status), std::move(reply));
    {
      std::lock_guard lock(shared_->mu);
      auto& threads = shared_->done_threads;
      threads.erase(std::find(threads.begin(), threads.end(),
                              std::this_thread::get_id()));
    }
  }

  Status Cancelled() const {
    return Status::Error(fmt::format(
        "the fetch from the stats API at {} was cancelled: the collector is "
        "shutting down",
        shared_->address));
  }

  Status Failure(const grpc::Status& status, std::string_view method) const {
    const std::string& address = shared_->address;
    // The peer's words: escaped and cut like any foreign text.
    const std::string message =
        SafeText(status.error_message(), kMaxShownMessage);
    switch (status.error_code()) {
      case grpc::StatusCode::UNAVAILABLE:
        return Status::Unavailable(fmt::format(
            "cannot reach the stats API at {}: {}; is sing-box running with "
            "experimental.v2ray_api.listen set to this address?",
            address, message));
      case grpc::StatusCode::UNIMPLEMENTED:
        return Status::Unimplemented(fmt::format(
            "the server at {} does not offer StatsService.{} ({}); set "
            "experimental.v2ray_api.stats.enabled: true in sing-box's config "
            "and check that this is its experimental.v2ray_api.listen (a "
            "sing-box built without the tag with_v2ray_api refuses to start "
            "with that block at all)",
            address, method, message));
      case grpc::StatusCode::DEADLINE_EXCEEDED:
        return Status::Deadline(fmt::format(
            "the stats API at {} did not answer {} within {}ms; raise "
            "source.timeout if sing-box is busy or has many counters",
            address, method, timeout_.count()));
      case grpc::StatusCode::RESOURCE_EXHAUSTED:
        if (status.error_message().find("larger than max") !=
            std::string::npos) {
          return Status::Error(fmt::format(
              "the {} reply from {} is larger than source.max_message_size "
              "({} bytes): {}; raise source.max_message_size",
              method, address, shared_->max_message_size, message));
        }
        break;
      case grpc::StatusCode::CANCELLED: {
        std::lock_guard lock(shared_->mu);
        if (shared_->closing) return Cancelled();
        break;
      }
      default:
        break;
    }
    return Status::Error(
        fmt::format("the stats API at {} failed {}: {} ({}): {}", address,
                    method, CodeName(status.error_code()),
                    static_cast<int>(status.error_code()), message));
  }

  // Declared first, so destroyed last: the call counts as gone only after
  // its contexts, which hold the channel, are destroyed.
  struct Registration {
    std::shared_ptr<Shared> shared;
    ~Registration() {
      {
        std::lock_guard lock(shared->mu);
        --shared->live_calls;
      }
      shared->idle.notify_all();
    }
  };
  Registration registration_;
  Shared* const shared_;
  std::chrono::milliseconds timeout_;
  Callback done_;

  grpc::ClientContext before_context_;
  grpc::ClientContext query_context_;
  grpc::ClientContext after_context_;
  api::SysStatsRequest sys_request_;
  api::SysStatsResponse before_response_;
  api::SysStatsResponse after_response_;
  api::QueryStatsRequest query_request_;
  api::QueryStatsResponse query_response_;
  StatsReply reply_;
};

GrpcStatsSource::GrpcStatsSource(std::string address, int64_t max_message_size,
                                 HostClock clock)
    : shared_(std::make_shared<Shared>()) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(ClampMessageSize(max_message_size));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              kInitialReconnectBackoffMs);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, kMaxReconnectBackoffMs);
  // The API is on loopback or in the pod's network: never via http_proxy.
  args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(
      address, grpc::InsecureChannelCredentials(), args);
  shared_->stub = api::StatsService::NewStub(channel);
  shared_->address = std::move(address);
  shared_->max_message_size = max_message_size;
  shared_->clock = std::move(clock);
  shared_->same_kernel = IsLoopbackAddress(shared_->address);
}

GrpcStatsSource::~GrpcStatsSource() {
  std::shared_ptr<Call> active;
  {
    std::lock_guard lock(shared_->mu);
    shared_->closing = true;
    active = shared_->active;
  }
  // Outside the lock: gRPC may complete the call on this thread.
  if (active != nullptr) active->Cancel();
  active.reset();  // so that it does not count as live below

  std::unique_lock lock(shared_->mu);
  bool inside_done =
      std::find(shared_->done_threads.begin(), shared_->done_threads.end(),
                std::this_thread::get_id()) != shared_->done_threads.end();
  if (!inside_done) {
    shared_->idle.wait(lock, [this] { return shared_->live_calls == 0; });
    std::unique_ptr<api::StatsService::Stub> stub = std::move(shared_->stub);
    lock.unlock();
    return;  // the channel goes here, on this thread
  }
  // Called from done, on a gRPC thread, whose call is still alive: let
  // another thread drop the channel once that call is gone.
  std::thread([shared = shared_] {
    std::unique_lock lock(shared->mu);
    shared->idle.wait(lock, [&shared] { return shared->live_calls == 0; });
    std::unique_ptr<api::StatsService::Stub> stub = std::move(shared->stub);
    lock.unlock();
  }).detach();
}

const std::string& GrpcStatsSource::address() const { return shared_->address; }

void GrpcStatsSource::Fetch(std::chrono::milliseconds timeout, Callback done) {
  std::shared_ptr<Call> call;
  {
    std::lock_guard lock(shared_->mu);
    if (shared_->active == nullptr) {
      call = std::make_shared<Call>(shared_, timeout, std::move(done));
      shared_->active = call;
      ++shared_->live_calls;
    }
  }
  if (call == nullptr) {
    done(Status::Error(fmt::format(
             "a fetch from the stats API at {} is still in progress; the "
             "next poll starts when it ends",
             shared_->address)),
         StatsReply());
    return;
  }
  call->Start();
}

}  // namespace boxmeter
