#include "daemon/core/region_hasher.h"

#include <openssl/evp.h>
#include <pthread.h>

#include <memory>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"

namespace lazyram {
namespace {

// Made local (fetched if need be) at a time; large enough to keep a remote
// source busy, small enough not to park a waiter on every page.
constexpr uint64_t kWindow = 16 << 20;
constexpr size_t kReadChunk = 1 << 20;

struct DigestDeleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

}  // namespace

void RegionHasher::Start(Region* region) {
  absl::MutexLock lock(&mu_);
  if (cancelled_) return;
  std::unique_ptr<Job>& slot = jobs_[region->name()];
  if (slot != nullptr && slot->progress.running) return;
  if (slot != nullptr && slot->thread.joinable()) slot->thread.join();  // finished already
  slot = std::make_unique<Job>();
  Job* job = slot.get();
  job->progress.running = true;
  job->progress.bytes_total = region->size();
  job->thread = std::thread([this, region, job] { Run(region, job); });
}

void RegionHasher::Run(Region* region, Job* job) {
  pthread_setname_np(pthread_self(), "lazyram-hash");
  const uint64_t size = region->size();
  std::unique_ptr<EVP_MD_CTX, DigestDeleter> ctx(EVP_MD_CTX_new());
  absl::Status status;
  if (ctx == nullptr || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    status = absl::InternalError("cannot set up SHA-256 (OpenSSL)");
  }
  // The next window is fetched while this one is hashed.
  struct Window {
    absl::Notification local;
    absl::Status status;
  };
  auto make_local = [region, size](uint64_t at) {
    auto w = std::make_shared<Window>();
    if (at >= size) {
      w->local.Notify();
      return w;
    }
    region->Prefetch(at, std::min(kWindow, size - at), [w](absl::Status s) {
      w->status = std::move(s);
      w->local.Notify();
    });
    return w;
  };
  std::vector<uint8_t> buf(kReadChunk);
  std::shared_ptr<Window> next = make_local(0);
  for (uint64_t at = 0; status.ok() && at < size; at += kWindow) {
    std::shared_ptr<Window> current = std::move(next);
    current->local.WaitForNotification();
    status = current->status;
    if (status.ok() && stop_.load()) status = absl::CancelledError("the daemon is shutting down");
    next = make_local(status.ok() ? at + kWindow : size);
    const uint64_t n = std::min(kWindow, size - at);
    for (uint64_t off = at; status.ok() && off < at + n; off += kReadChunk) {
      const size_t len = static_cast<size_t>(std::min<uint64_t>(kReadChunk, at + n - off));
      status = region->store().Read(off, std::span(buf.data(), len));
      if (status.ok() && EVP_DigestUpdate(ctx.get(), buf.data(), len) != 1) {
        status = absl::InternalError("SHA-256 update failed");
      }
      if (status.ok()) job->bytes_done.store(off + len, std::memory_order_relaxed);
    }
  }
  // A window still being fetched refers to nothing of ours but itself.
  if (next != nullptr) next->local.WaitForNotification();
  std::string hex;
  if (status.ok()) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_len = 0;
    if (EVP_DigestFinal_ex(ctx.get(), digest, &digest_len) != 1) {
      status = absl::InternalError("SHA-256 final failed");
    } else {
      hex = absl::BytesToHexString(
          absl::string_view(reinterpret_cast<const char*>(digest), digest_len));
    }
  }
  absl::MutexLock lock(&mu_);
  job->progress.running = false;
  job->progress.bytes_done = job->bytes_done.load();
  job->progress.sha256 = std::move(hex);
  if (!status.ok()) {
    job->progress.status = absl::Status(
        status.code(), absl::StrCat("hashing ", region->name(), ": ", status.message()));
  }
}

RegionHasher::Progress RegionHasher::Snapshot(const Job& job) const {
  Progress p = job.progress;
  if (p.running) p.bytes_done = job.bytes_done.load(std::memory_order_relaxed);
  return p;
}

std::optional<RegionHasher::Progress> RegionHasher::Get(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(name);
  if (it == jobs_.end()) return std::nullopt;
  return Snapshot(*it->second);
}

std::optional<RegionHasher::Progress> RegionHasher::Wait(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto done = [&] {
    auto it = jobs_.find(name);
    return it == jobs_.end() || !it->second->progress.running;
  };
  mu_.Await(absl::Condition(&done));
  auto it = jobs_.find(name);
  if (it == jobs_.end()) return std::nullopt;
  return Snapshot(*it->second);
}

void RegionHasher::Cancel() {
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    stop_.store(true);
    for (auto& [name, job] : jobs_) {
      if (job->thread.joinable()) threads.push_back(std::move(job->thread));
    }
  }
  for (std::thread& t : threads) t.join();
}

}  // namespace lazyram
