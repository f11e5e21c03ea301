// FdStore: a Store backed by one file descriptor — an anonymous memfd
// (--store mem) or a sparse file under a directory (--store DIR).
// Owns the descriptor. Thread-safe (pread/pwrite/fallocate).
#ifndef LAZYRAM_DAEMON_STORE_FD_STORE_H_
#define LAZYRAM_DAEMON_STORE_FD_STORE_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "daemon/base/unique_fd.h"
#include "daemon/core/store.h"

namespace lazyram {

class FdStore : public Store {
 public:
  // An anonymous in-memory store named `name` (visible in /proc/PID/fd).
  static absl::StatusOr<std::unique_ptr<FdStore>> CreateMemory(absl::string_view name,
                                                               uint64_t size);
  // A sparse file `dir`/`name`, created or truncated to empty first so no
  // stale bytes can be served as pages the page map calls zero.
  static absl::StatusOr<std::unique_ptr<FdStore>> CreateFile(absl::string_view dir,
                                                             absl::string_view name, uint64_t size);

  absl::Status Read(uint64_t offset, std::span<uint8_t> out) override;
  absl::Status Write(uint64_t offset, std::span<const uint8_t> data) override;
  absl::Status Punch(uint64_t offset, uint64_t length) override;
  absl::Status Resize(uint64_t size) override;
  uint64_t Size() const override { return size_.load(std::memory_order_acquire); }
  int fd() const override { return fd_.get(); }

 private:
  FdStore(UniqueFd fd, std::string description, uint64_t size);

  UniqueFd fd_;
  std::string description_;  // for error messages
  std::atomic<uint64_t> size_;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_STORE_FD_STORE_H_
