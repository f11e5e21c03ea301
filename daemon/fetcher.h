// Fetcher: the daemon's side of the page protocol. A PageSource that keeps
// one demand connection and a few bulk connections to one page server and
// pipelines tagged READs on them from a single I/O thread ("lazyram-fetch")
// that owns the io_uring.
//
// Demand requests go only on the demand connection, so they never queue
// behind a megabyte of bulk replies (the postcopy-preempt idea). When a
// connection fails, its outstanding requests are re-sent once it is back;
// fetches wait meanwhile, they are not failed. A reconnect must find the
// same region table.
//
// Thread-safety: Fetch, Detach and state may be called from any thread.
// Callbacks run on the I/O thread and must not block.
#ifndef LAZYRAM_DAEMON_FETCHER_H_
#define LAZYRAM_DAEMON_FETCHER_H_

#include <atomic>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/auth_key.h"
#include "daemon/net_address.h"
#include "daemon/page_source.h"
#include "daemon/protocol.h"
#include "daemon/source_dialer.h"
#include "daemon/unique_fd.h"

namespace lazyram {

enum class SourceState { kConnected, kReconnecting, kDetached };
absl::string_view SourceStateName(SourceState state);

class Fetcher : public PageSource {
 public:
  struct Options {
    NetAddress address;
    int bulk_connections = 2;
    absl::Duration connect_timeout = absl::Seconds(3);
    std::shared_ptr<const AuthKey> auth_key;  // null: no authentication
  };

  // Takes over `first` (the connection the mount dialed to learn the
  // regions) as the demand connection and starts the I/O thread, which
  // opens the bulk connections.
  static absl::StatusOr<std::unique_ptr<Fetcher>> Start(Options options, DialedSource first);
  // Stops the I/O thread; fetches still pending fail with kCancelled and
  // later ones with kFailedPrecondition. Idempotent.
  void Shutdown();
  ~Fetcher() override;

  const protocol::Welcome& welcome() const { return welcome_; }

  void Fetch(uint32_t region, uint64_t first_page, uint32_t count, protocol::Priority priority,
             FetchCallback done) override;

  // Closes every connection for good: every page is local. Later fetches
  // fail with kFailedPrecondition.
  void Detach();

  SourceState state() const;
  uint64_t checksum_errors() const { return checksum_errors_.load(std::memory_order_relaxed); }

 private:
  struct Request {
    uint32_t region = 0;
    uint64_t first_page = 0;
    uint32_t count = 0;
    protocol::Priority priority = protocol::Priority::kDemand;
    FetchCallback done;
  };
  class Loop;  // the I/O thread's state; lives in fetcher.cc

  Fetcher(Options options, protocol::Welcome welcome);

  void Wake();

  const Options options_;
  const protocol::Welcome welcome_;
  UniqueFd wake_fd_;  // eventfd the I/O thread waits on

  mutable absl::Mutex mu_;
  std::deque<Request> demand_queue_ ABSL_GUARDED_BY(mu_);
  std::deque<Request> bulk_queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool detached_ ABSL_GUARDED_BY(mu_) = false;

  std::atomic<int> connections_up_{0};
  std::atomic<uint64_t> checksum_errors_{0};
  std::unique_ptr<Loop> loop_;
  std::thread thread_;  // last: joined before the members above go away
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_FETCHER_H_
