// PagePusher: puts the pages the background pull fetched into the kernel's
// page cache with fuse_lowlevel_notify_store, so that a consumer's first
// touch of a pulled page is a page-cache hit instead of a FUSE READ.
//
// The rules (design.md): a push overwrites whatever the page cache holds, so
// only pages the kernel has never been given are pushed. Every READ, WRITE
// and FALLOCATE marks its pages "served" when it arrives, before it is
// answered; the push claims a page (never served -> pushing) right before
// it copies it in, in small runs, and no request handler ever waits for a
// push. A request that finds one of its pages mid-push is counted as a
// race (status "push.races"); docs/performance.md explains the window.
//
// Only regions with a source are tracked (nothing is pulled into the
// others). Threading: one thread ("lazyram-push") does the pushes; every
// public method may be called from any thread.
#ifndef LAZYRAM_FUSEFS_PAGE_PUSHER_H_
#define LAZYRAM_FUSEFS_PAGE_PUSHER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/engine.h"
#include "nlohmann/json.hpp"

struct fuse_session;

namespace lazyram::fusefs {

class PagePusher {
 public:
  // Tracks every region of `engine` that has a source; the session must
  // outlive the pusher. Starts the push thread and listens to the pulls.
  static absl::StatusOr<std::unique_ptr<PagePusher>> Create(Engine* engine, fuse_session* session);
  PagePusher(const PagePusher&) = delete;
  PagePusher& operator=(const PagePusher&) = delete;
  // Stops listening and pushing; waits for the push in progress.
  ~PagePusher();

  // A request covering [offset, offset+length) of region `index` arrived:
  // the kernel may hold these pages from now on. Never blocks.
  void MarkServed(size_t index, uint64_t offset, uint64_t length);
  // The kernel learned region `index`'s inode (LOOKUP, CREATE): pages made
  // local before that could not be pushed; push them now.
  void InodeKnown(size_t index);

  // {"enabled": true, "pages_pushed", "races", "pending_runs"}: runs queued
  // or being pushed (0: the pusher is idle).
  nlohmann::json StatusJson() const;

 private:
  struct Tracked;
  struct Run {
    size_t index;
    uint64_t first;
    uint64_t count;
  };

  PagePusher(Engine* engine, fuse_session* session);
  void Enqueue(Run run);
  void Loop();
  void Push(const Run& run);
  // Claims, reads and pushes [first, first+count) pages of `t`, all of
  // which it has claimed; returns how many were pushed.
  uint64_t PushClaimed(Tracked& t, uint64_t first, uint64_t count);

  Engine* const engine_;
  fuse_session* const session_;
  std::vector<std::unique_ptr<Tracked>> tracked_;  // by region index; null: untracked

  absl::Mutex mu_;
  std::deque<Run> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;

  std::atomic<uint64_t> pushed_{0};
  std::atomic<uint64_t> races_{0};
  std::atomic<uint64_t> queued_{0};
  std::thread thread_;
};

}  // namespace lazyram::fusefs

#endif  // LAZYRAM_FUSEFS_PAGE_PUSHER_H_
