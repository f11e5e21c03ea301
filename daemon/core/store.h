// Store: where a region's local pages live. The daemon reads and writes page
// bytes through this interface only; FdStore (memfd or sparse file) is the
// real one, tests may substitute their own.
//
// Offsets are region byte offsets. Bytes never written read as zero, and so
// do bytes whose range was punched. Thread-safety: every method may be called
// concurrently; callers order overlapping writes themselves.
#ifndef LAZYRAM_DAEMON_CORE_STORE_H_
#define LAZYRAM_DAEMON_CORE_STORE_H_

#include <sys/stat.h>

#include <cstdint>
#include <span>

#include "absl/status/status.h"

namespace lazyram {

class Store {
 public:
  virtual ~Store() = default;

  // Reads exactly out.size() bytes at `offset` (within Size()).
  virtual absl::Status Read(uint64_t offset, std::span<uint8_t> out) = 0;
  // Writes all of `data` at `offset` (within Size()).
  virtual absl::Status Write(uint64_t offset, std::span<const uint8_t> data) = 0;
  // Makes [offset, offset+length) read as zero and frees its space.
  virtual absl::Status Punch(uint64_t offset, uint64_t length) = 0;
  // Sets the size; bytes past the old size read as zero.
  virtual absl::Status Resize(uint64_t size) = 0;
  virtual uint64_t Size() const = 0;
  // Bytes of memory (memfd) or disk (sparse file) the store holds now: a
  // punched or never-written range holds none. Status reports it as
  // store_bytes.
  virtual uint64_t AllocatedBytes() const;
  // Makes every completed write durable (a no-op for memory stores).
  virtual absl::Status Sync() { return absl::OkStatus(); }
  // A descriptor whose bytes are the store's, for zero-copy replies
  // (splice), or -1 if the store has none.
  virtual int fd() const = 0;
};

// From fd()'s allocated blocks; 0 for a store without a descriptor.
inline uint64_t Store::AllocatedBytes() const {
  struct stat st;
  if (fd() < 0 || fstat(fd(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_CORE_STORE_H_
