// Fetcher: the daemon's side of the page protocol. A PageSource that
// fetches from a page server (one of its replicas, see SourceReplicas) on
// FetchChannels, each with its own connection, I/O thread and io_uring:
// demand fetches on one ("lazyram-demand"), the background pull on
// `bulk_connections` more ("lazyram-fetch", one thread each, so that
// landing pulled pages can use every core). A fault therefore never queues
// behind bulk replies, neither on the wire nor in a thread that is busy
// storing them (the postcopy-preempt idea).
//
// When a connection fails, its outstanding requests are re-sent once it is
// back (fetch_channel.h); fetches wait meanwhile, they are not failed,
// unless `fetch_timeout` is set: a demand fetch not answered within it
// fails with kUnavailable, and so does every demand fetch after it, at
// once, until a connection opens or bytes arrive (the puller's bulk fetches
// keep waiting). A reconnect must find the same region table.
//
// Memory: each connection has a fixed receive buffer (pages are copied
// from it into the store), and the replies owed by the servers — the
// largest size of every request in flight — are capped so that buffers
// plus replies stay within `max_memory`. Bulk requests use at most three
// quarters of that room and wait beyond; demand requests may use all of it.
//
// Thread-safety: Fetch, Detach, state and stats may be called from any
// thread. Callbacks run on a channel's I/O thread and must not block.
#ifndef LAZYRAM_DAEMON_FETCH_FETCHER_H_
#define LAZYRAM_DAEMON_FETCH_FETCHER_H_

#include <atomic>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "daemon/base/net_address.h"
#include "daemon/core/page_source.h"
#include "daemon/fetch/fetch_channel.h"
#include "daemon/fetch/source_replicas.h"
#include "daemon/protocol/auth_key.h"
#include "daemon/protocol/protocol.h"

namespace lazyram {

enum class SourceState { kConnected, kReconnecting, kDetached };
absl::string_view SourceStateName(SourceState state);

class Fetcher : public PageSource {
 public:
  struct Options {
    std::vector<NetAddress> addresses;  // replicas, in order of preference; not empty
    int bulk_connections = 2;
    absl::Duration connect_timeout = absl::Seconds(5);
    std::shared_ptr<const AuthKey> auth_key;                  // null: no authentication
    absl::Duration fetch_timeout = absl::InfiniteDuration();  // for demand fetches
    uint64_t max_memory = uint64_t{64} << 20;  // at least MinMemory(bulk_connections)
    // Tests only: see FetchShared::after_direct_send.
    std::function<void()> after_direct_send;
  };
  struct Stats {
    uint64_t checksum_errors = 0;
    uint64_t fetch_timeouts = 0;   // demand fetches failed by fetch_timeout (or at once after one)
    uint64_t memory_cap = 0;       // Options::max_memory
    uint64_t memory_buffers = 0;   // receive buffers, fixed
    uint64_t memory_inflight = 0;  // largest size of the replies owed now
    uint64_t memory_peak = 0;      // buffers + most replies ever owed at once
    uint64_t memory_waits = 0;     // requests that waited for room
  };

  // The least max_memory that leaves room for one request per connection.
  static uint64_t MinMemory(int bulk_connections);

  // Dials the replicas (SourceReplicas::DialAtStart), takes the connection
  // that answered first as the demand connection and starts the I/O
  // thread, which opens the bulk connections.
  static absl::StatusOr<std::unique_ptr<Fetcher>> Connect(Options options);
  // Stops the I/O thread; fetches still pending fail with kCancelled and
  // later ones with kFailedPrecondition. Idempotent.
  void Shutdown();
  ~Fetcher() override;

  const protocol::Welcome& welcome() const { return replicas_.welcome(); }
  const SourceReplicas& replicas() const { return replicas_; }

  void Fetch(uint32_t region, uint64_t first_page, uint32_t count, protocol::Priority priority,
             FetchCallback done) override;

  // Closes every connection for good: every page is local. Later fetches
  // fail with kFailedPrecondition.
  void Detach();

  SourceState state() const;
  uint64_t checksum_errors() const {
    return shared_.checksum_errors.load(std::memory_order_relaxed);
  }
  Stats stats() const;

 private:
  explicit Fetcher(Options options);

  const Options options_;
  SourceReplicas replicas_;
  FetchShared shared_;
  // Member order is stop order: the bulk channel (which the puller feeds)
  // stops first.
  std::unique_ptr<FetchChannel> demand_;
  std::vector<std::unique_ptr<FetchChannel>> bulk_;
  std::atomic<bool> detached_{false};
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_FETCH_FETCHER_H_
