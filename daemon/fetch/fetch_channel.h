// FetchChannel: one class of traffic to the page server — demand fetches
// or the background pull — on a connection of its own, driven by an I/O
// thread of its own that owns an io_uring. The Fetcher has one demand
// channel and one or more bulk channels: demand requests never share a
// connection, a thread or a ring with bulk ones, so a fault never waits
// while a megabyte of pulled pages is received and stored (QEMU's
// postcopy-preempt channel is the same idea).
//
// Each (re)connect dials on a short-lived thread ("lazyram-dial"), so a
// server that does not answer holds up nothing else. When a connection
// fails, its outstanding requests are sent again once it is back — on the
// next replica when there are several (then a connection that owes replies
// and receives nothing for kStallTimeout counts as failed too).
//
// A demand channel sends a request straight from the caller's thread when
// its connection is idle on the sending side (a non-blocking send of a few
// dozen bytes): the fault path then wakes no thread of ours on the way out,
// only the I/O thread when the reply arrives.
//
// Memory: each connection has a fixed receive buffer; replies owed (the
// largest size of every request in flight) are charged to the Fetcher's
// shared budget, of which bulk requests may use three quarters.
//
// Thread-safety: Submit, Detach and stats may be called from any thread.
// Callbacks run on the channel's I/O thread and must not block.
#ifndef LAZYRAM_DAEMON_FETCH_FETCH_CHANNEL_H_
#define LAZYRAM_DAEMON_FETCH_FETCH_CHANNEL_H_

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/base/event_fd.h"
#include "daemon/base/io_ring.h"
#include "daemon/base/unique_fd.h"
#include "daemon/core/page_source.h"
#include "daemon/fetch/source_dialer.h"
#include "daemon/fetch/source_replicas.h"
#include "daemon/protocol/protocol.h"

namespace lazyram {

// What the Fetcher's channels share: the replicas, the limits, the memory
// budget for replies owed and the counters behind Fetcher::stats().
struct FetchShared {
  SourceReplicas* replicas = nullptr;
  absl::Duration connect_timeout;
  absl::Duration fetch_timeout;  // demand only; InfiniteDuration: none
  uint64_t room = 0;             // for replies owed: the memory cap less every buffer

  std::atomic<uint64_t> inflight{0};  // ReplyCost of every outstanding request
  std::atomic<uint64_t> peak{0};
  std::atomic<uint64_t> waits{0};
  std::atomic<int> connections_up{0};
  std::atomic<uint64_t> checksum_errors{0};
  std::atomic<uint64_t> fetch_timeouts{0};
  // A demand fetch timed out and nothing has arrived since.
  std::atomic<bool> failing_fast{false};
  // Tests only: runs on a submitting thread between its direct send and
  // giving the demand connection's sending side back.
  std::function<void()> after_direct_send;
};

struct FetchRequest {
  uint32_t region = 0;
  uint64_t first_page = 0;
  uint32_t count = 0;
  protocol::Priority priority = protocol::Priority::kDemand;
  FetchCallback done;
  absl::Time deadline = absl::InfiniteFuture();  // fetch_timeout, demand only
  bool waited = false;                           // counted in FetchShared::waits
  bool expired = false;                          // failed by the timeout; its reply is dropped
};

class FetchChannel {
 public:
  enum class Kind { kDemand, kBulk };

  // Receive buffer of the connection: room for several maximal frames, so
  // that one recv can carry many replies.
  static constexpr size_t kRecvBuffer = 4 * (protocol::kHeaderSize + protocol::kMaxFrameBody);
  // The most a reply to a READ of `count` pages can take.
  static uint64_t ReplyCost(uint32_t count) { return protocol::PagesFrameCapacity(count); }

  // Starts the I/O thread, which dials the channel's connection — unless
  // `first`, already open, is given. `shared` must outlive the channel.
  static absl::StatusOr<std::unique_ptr<FetchChannel>> Start(Kind kind, FetchShared* shared,
                                                             std::optional<DialedSource> first);
  FetchChannel(const FetchChannel&) = delete;
  FetchChannel& operator=(const FetchChannel&) = delete;
  // Stops the I/O thread: requests still pending fail with kCancelled,
  // later submissions are refused. Idempotent.
  void Stop();
  ~FetchChannel();

  // Queues (or, on a demand channel, sends at once) a request. Returns the
  // request unconsumed — `done` not called — when the channel is detached
  // or stopping.
  std::optional<FetchRequest> Submit(FetchRequest request);
  // Closes the connection for good; later submissions are refused.
  void Detach();
  // The largest size of the replies this channel is owed now.
  uint64_t inflight() const { return my_inflight_.load(std::memory_order_relaxed); }

 private:
  struct Connection;  // fetch_channel_connection.h
  FetchChannel(Kind kind, FetchShared* shared);

  // Lifecycle, submission and the I/O loop (fetch_channel.cc).
  void Run();
  void Wake();
  // Wakes the I/O thread unless a wake-up is pending already.
  void WakeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Enqueue(FetchRequest request) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ArmWake();
  void FailAll(const absl::Status& status);

  // The connection (fetch_channel_connection.cc).
  void Reconnect();
  void FinishDials();
  void OnDialed(size_t replica, absl::StatusOr<DialedSource> dialed);
  void Up(UniqueFd fd, size_t replica);
  void Pump();
  void Fail(const absl::Status& why);
  // The server broke the protocol: logged as an error, then like Fail.
  void Reject(const absl::Status& why);
  void MaybeFinishClose();
  void OnRecv(int res);
  void OnSend(int res);

  // Requests owed (fetch_channel_requests.cc).
  // Fails demand fetches whose deadline passed; returns the next deadline.
  absl::Time ExpireDemand();
  // With replicas: fails the connection if it owes replies and stalled.
  absl::Time FailStalled();
  void Charge(uint64_t bytes);
  void Refund(uint64_t bytes);
  bool Fits(FetchRequest& request, uint64_t limit) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves queued requests onto the connection (their frames into `out`).
  void Distribute();
  // An error means the frame breaks the protocol: drop the connection.
  absl::Status HandleFrame(const protocol::FrameHeader& header, std::span<const uint8_t> body);
  const char* name() const { return kind_ == Kind::kDemand ? "demand" : "bulk"; }

  const Kind kind_;
  FetchShared* const shared_;
  EventFd wake_;                          // the I/O thread waits on it
  std::atomic<uint64_t> my_inflight_{0};  // this channel's part of shared_->inflight

  // Lock order: mu_ -> dial_mu_. Guards what a submitting thread and the
  // I/O thread both touch: the queue, and of the connection whether it is
  // up, its unsent frames, whether a send is in flight and what it owes.
  absl::Mutex mu_;
  std::deque<FetchRequest> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t next_tag_ ABSL_GUARDED_BY(mu_) = 1;
  bool detached_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_pending_ ABSL_GUARDED_BY(mu_) = false;
  const std::unique_ptr<Connection> conn_;  // see Connection for its fields' guards

  struct DialResult {
    size_t replica;
    absl::StatusOr<DialedSource> dialed;
  };
  absl::Mutex dial_mu_;
  std::vector<DialResult> dial_results_ ABSL_GUARDED_BY(dial_mu_);

  // Created on the I/O thread (the ring is SINGLE_ISSUER) and destroyed
  // there, before the connection it points into.
  std::unique_ptr<IoRing> ring_;
  std::thread thread_;  // last: joined before the members above go away
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_FETCH_FETCH_CHANNEL_H_
