#include "fusefs/page_pusher.h"

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "daemon/log.h"

namespace lazyram::fusefs {
namespace {

constexpr uint64_t kPageSize = protocol::kPageSize;
// Pages claimed and pushed at a time: the claim-to-copy window a racing
// READ can fall into stays a few microseconds.
constexpr uint64_t kChunkPages = 16;
// Past this many queued runs, a region is swept once instead.
constexpr size_t kMaxQueuedRuns = 1 << 16;

// Per-page push state, one byte per page.
enum Mark : uint8_t {
  kUnserved = 0,  // the kernel has never been given this page
  kPushing = 1,   // claimed by the push thread, being copied in
  kServed = 2,    // a request for it arrived: never push it
  kPushed = 3,    // pushed; a later READ (after eviction) is harmless
};

}  // namespace

struct PagePusher::Tracked {
  Region* region = nullptr;
  uint64_t ino = 0;  // region index + 2 (fusefs/filesystem.h)
  uint64_t pages = 0;
  std::atomic<uint8_t>* marks = nullptr;  // NORESERVE mapping, `pages` bytes
  std::atomic<bool> missed{true};         // pages went unpushed: sweep on InodeKnown

  ~Tracked() {
    if (marks != nullptr) munmap(marks, pages);
  }
};

PagePusher::PagePusher(Engine* engine, fuse_session* session)
    : engine_(engine), session_(session) {}

absl::StatusOr<std::unique_ptr<PagePusher>> PagePusher::Create(Engine* engine,
                                                               fuse_session* session) {
  std::unique_ptr<PagePusher> pusher(new PagePusher(engine, session));
  for (size_t i = 0; i < engine->region_count(); ++i) {
    Region* region = engine->region(i);
    if (!region->has_source() || region->size() == 0) {
      pusher->tracked_.push_back(nullptr);
      continue;
    }
    auto t = std::make_unique<Tracked>();
    t->region = region;
    t->ino = i + 2;
    t->pages = (region->size() + kPageSize - 1) / kPageSize;
    void* m = mmap(nullptr, t->pages, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot map push marks for ", region->name(), ": ", std::strerror(errno)));
    }
    t->marks = static_cast<std::atomic<uint8_t>*>(m);
    pusher->tracked_.push_back(std::move(t));
  }
  PagePusher* p = pusher.get();
  pusher->thread_ = std::thread([p] {
    pthread_setname_np(pthread_self(), "lazyram-push");
    p->Loop();
  });
  for (size_t i = 0; i < pusher->tracked_.size(); ++i) {
    if (pusher->tracked_[i] == nullptr) continue;
    pusher->tracked_[i]->region->SetPullListener([p, i](uint64_t first, uint32_t count) {
      p->Enqueue({i, first, count});
    });
  }
  return pusher;
}

PagePusher::~PagePusher() {
  for (auto& t : tracked_) {
    if (t != nullptr) t->region->SetPullListener(nullptr);
  }
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void PagePusher::MarkServed(size_t index, uint64_t offset, uint64_t length) {
  if (index >= tracked_.size() || tracked_[index] == nullptr || length == 0) return;
  Tracked& t = *tracked_[index];
  const uint64_t first = offset / kPageSize;
  const uint64_t end = std::min(t.pages, (offset + length + kPageSize - 1) / kPageSize);
  for (uint64_t p = first; p < end; ++p) {
    if (t.marks[p].load(std::memory_order_relaxed) == kServed) continue;
    if (t.marks[p].exchange(kServed, std::memory_order_acq_rel) == kPushing) {
      races_.fetch_add(1, std::memory_order_relaxed);
    }
  }
}

void PagePusher::InodeKnown(size_t index) {
  if (index >= tracked_.size() || tracked_[index] == nullptr) return;
  Tracked& t = *tracked_[index];
  if (t.missed.exchange(false)) Enqueue({index, 0, t.pages});
}

void PagePusher::Enqueue(Run run) {
  absl::MutexLock lock(&mu_);
  if (queue_.size() >= kMaxQueuedRuns) {
    // Fall back to one sweep of the region when the pushes fall behind.
    Tracked& t = *tracked_[run.index];
    run = {run.index, 0, t.pages};
    for (const Run& r : queue_) {
      if (r.index == run.index && r.first == 0 && r.count == t.pages) return;
    }
  }
  queue_.push_back(run);
  queued_.store(queue_.size(), std::memory_order_relaxed);
}

void PagePusher::Loop() {
  for (;;) {
    Run run;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_ || !queue_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (stop_) return;
      run = queue_.front();
      queue_.pop_front();
      queued_.store(queue_.size() + 1, std::memory_order_relaxed);  // + this one
    }
    Push(run);
    absl::MutexLock lock(&mu_);
    queued_.store(queue_.size(), std::memory_order_relaxed);
  }
}

void PagePusher::Push(const Run& run) {
  Tracked& t = *tracked_[run.index];
  const uint64_t end = std::min(t.pages, run.first + run.count);
  uint64_t claimed_first = 0, claimed = 0;
  for (uint64_t p = run.first; p < end; ++p) {
    // Only pages as fetched: dirty ones were written (so served), zero
    // ones cost page cache for nothing. A request changing a page marks
    // it served before it changes it, so the claim below fails for it.
    const bool wanted = t.region->page_state(p) == PageState::kPresent;
    uint8_t expected = kUnserved;
    if (wanted && t.marks[p].compare_exchange_strong(expected, kPushing)) {
      if (claimed == 0) claimed_first = p;
      ++claimed;
      if (claimed < kChunkPages && p + 1 < end) continue;
    }
    if (claimed > 0) PushClaimed(t, claimed_first, claimed);
    claimed = 0;
  }
  if (claimed > 0) PushClaimed(t, claimed_first, claimed);
}

uint64_t PagePusher::PushClaimed(Tracked& t, uint64_t first, uint64_t count) {
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  // Aligned: an O_DIRECT store reads straight into it.
  static thread_local std::unique_ptr<uint8_t, Free> buffer(
      static_cast<uint8_t*>(std::aligned_alloc(kPageSize, kChunkPages * kPageSize)));
  const uint64_t offset = first * kPageSize;
  const uint64_t length = std::min(count * kPageSize, t.region->size() - offset);
  absl::Status s = t.region->store().Read(offset, std::span(buffer.get(), length));
  int rc = -EIO;
  if (s.ok()) {
    fuse_bufvec buf = FUSE_BUFVEC_INIT(length);
    buf.buf[0].mem = buffer.get();
    rc = fuse_lowlevel_notify_store(session_, t.ino, static_cast<off_t>(offset), &buf,
                                    static_cast<fuse_buf_copy_flags>(0));
  } else {
    LogWarning("push of %s at %u: %s", t.region->name(), offset, s.message());
  }
  const uint8_t after = rc == 0 ? kPushed : kUnserved;
  for (uint64_t p = first; p < first + count; ++p) {
    uint8_t expected = kPushing;
    t.marks[p].compare_exchange_strong(expected, after);  // fails only if served meanwhile
  }
  if (rc != 0) {
    // ENOENT: the kernel does not know the inode yet (never looked up, or
    // forgotten); InodeKnown sweeps the region later.
    t.missed.store(true);
    return 0;
  }
  pushed_.fetch_add(count, std::memory_order_relaxed);
  return count;
}

nlohmann::json PagePusher::StatusJson() const {
  return {{"enabled", true},
          {"pages_pushed", pushed_.load(std::memory_order_relaxed)},
          {"races", races_.load(std::memory_order_relaxed)},
          {"pending_runs", queued_.load(std::memory_order_relaxed)}};
}

}  // namespace lazyram::fusefs
