// SourceReplicas: the page servers a mount may fetch from — one, or several
// replicas of the same image (`--source` given more than once) — and which
// one is in use. Every handshake, at start-up and at every reconnect, must
// show the region table of the first replica that answered at start-up
// (names, sizes and zero extents, see RegionTableChange); a replica that
// differs is refused. When the replica in use fails, the next one (round
// robin) becomes current.
//
// Thread-safety: all methods may be called from any thread; dials run
// without the lock held. Owned by the Fetcher, whose I/O thread dials.
#ifndef LAZYRAM_DAEMON_FETCH_SOURCE_REPLICAS_H_
#define LAZYRAM_DAEMON_FETCH_SOURCE_REPLICAS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/base/net_address.h"
#include "daemon/fetch/source_dialer.h"
#include "daemon/protocol/protocol.h"

namespace lazyram {

class SourceReplicas {
 public:
  enum class State {
    kUp,       // at least one connection open
    kStandby,  // answered with the right table; no connection open
    kDown,     // the last dial or connection failed
    kRefused,  // answered with a different region table
  };
  struct Info {
    std::string url;  // tcp://HOST:PORT
    State state = State::kStandby;
    int connections = 0;
    uint64_t refusals = 0;  // handshakes refused for a different table
  };

  // `addresses` is not empty; `key` (may be null: no authentication) is
  // proved to every replica.
  SourceReplicas(std::vector<NetAddress> addresses, std::shared_ptr<const AuthKey> key = nullptr);

  // Start-up: dials every replica at once. The first one, in command-line
  // order, that completes the handshake defines the region table and
  // becomes current; its connection is returned. Each other replica is
  // checked against it and closed again: one with another table is logged
  // and marked refused (it stays refused until it serves the right table).
  // Fails, naming every replica's error, only when none answered; with one
  // replica, with that replica's own error.
  // `hints`: feature bits for HELLO beyond authentication (the demand
  // channel's kFeatureDemandChannel).
  absl::StatusOr<DialedSource> DialAtStart(absl::Duration timeout, uint32_t hints = 0);

  // Dials the current replica and checks its table. On failure the replica
  // is marked down or refused and the next one becomes current. `*index`
  // gets the replica dialed, success or not.
  absl::StatusOr<DialedSource> DialCurrent(absl::Duration timeout, size_t* index,
                                           uint32_t hints = 0);

  // A connection to replica `index` opened / closed. `failed`: it was lost
  // (not closed on purpose): the replica is down and, if it is current,
  // the next one becomes current.
  void ConnectionUp(size_t index);
  void ConnectionDown(size_t index, bool failed);

  size_t size() const { return addresses_.size(); }
  const NetAddress& address(size_t index) const { return addresses_[index]; }
  // The region table every replica must match.
  const protocol::Welcome& welcome() const { return welcome_; }

  size_t current() const;
  uint64_t failovers() const;
  std::vector<Info> Snapshot() const;

 private:
  // Moves `current_` past `index` if it is current (round robin).
  void AdvanceFrom(size_t index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // kFailedPrecondition naming the difference, or OK.
  absl::Status Check(size_t index, const protocol::Welcome& welcome) const;

  const std::vector<NetAddress> addresses_;
  const std::shared_ptr<const AuthKey> key_;
  protocol::Welcome welcome_;  // set once by DialAtStart, read-only after

  mutable absl::Mutex mu_;
  std::vector<Info> info_ ABSL_GUARDED_BY(mu_);
  size_t current_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t failovers_ ABSL_GUARDED_BY(mu_) = 0;
};

absl::string_view ReplicaStateName(SourceReplicas::State state);

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_FETCH_SOURCE_REPLICAS_H_
