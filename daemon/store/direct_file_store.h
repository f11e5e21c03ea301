// DirectFileStore: --store DIR. One sparse file per region, read and written
// with O_DIRECT so a page is cached once — in the FUSE file's page cache —
// and not a second time in the store file's. Unaligned requests go through
// a per-thread aligned bounce buffer (read-modify-write of partial pages;
// Region's stripe locks keep writers of one page apart).
//
// Filesystems without O_DIRECT (tmpfs) get buffered I/O instead, logged.
// Thread-safe.
#ifndef LAZYRAM_DAEMON_STORE_DIRECT_FILE_STORE_H_
#define LAZYRAM_DAEMON_STORE_DIRECT_FILE_STORE_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "daemon/base/unique_fd.h"
#include "daemon/core/store.h"

namespace lazyram {

class DirectFileStore : public Store {
 public:
  // Creates `dir`/`name`, truncated to empty first so no stale bytes can be
  // served as pages the page map calls zero, then sized to `size`.
  static absl::StatusOr<std::unique_ptr<DirectFileStore>> Create(absl::string_view dir,
                                                                 absl::string_view name,
                                                                 uint64_t size);
  // Opens `dir`/`name` keeping its bytes (a store whose page states were
  // restored, see StateFile), sized to `size`; created if missing.
  static absl::StatusOr<std::unique_ptr<DirectFileStore>> Open(absl::string_view dir,
                                                               absl::string_view name,
                                                               uint64_t size);

  absl::Status Read(uint64_t offset, std::span<uint8_t> out) override;
  absl::Status Write(uint64_t offset, std::span<const uint8_t> data) override;
  absl::Status Punch(uint64_t offset, uint64_t length) override;
  absl::Status Resize(uint64_t size) override;
  uint64_t Size() const override { return size_.load(std::memory_order_acquire); }
  absl::Status Sync() override;
  // From the file's allocated blocks (fd() is -1 with O_DIRECT).
  uint64_t AllocatedBytes() const override;
  // -1: replies must go through Read (libfuse's fd path is not aligned).
  int fd() const override { return direct_ ? -1 : fd_.get(); }
  bool direct() const { return direct_; }

 private:
  DirectFileStore(UniqueFd fd, std::string path, uint64_t size, bool direct);
  static absl::StatusOr<std::unique_ptr<DirectFileStore>> OpenFile(absl::string_view dir,
                                                                   absl::string_view name,
                                                                   uint64_t size, bool truncate);
  absl::Status ReadAligned(uint64_t offset, uint8_t* buf, size_t len);
  absl::Status WriteAligned(uint64_t offset, const uint8_t* buf, size_t len);

  UniqueFd fd_;
  std::string path_;  // for error messages
  std::atomic<uint64_t> size_;
  bool direct_;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_STORE_DIRECT_FILE_STORE_H_
