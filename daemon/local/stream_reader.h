// StreamReader: sequential big-endian reads from a file through a large
// buffer, for indexing a migration stream in one pass.
//
// Errors are sticky: once a read fails (the file ends, or pread fails)
// every later read returns zero and ok() is false; callers check ok() where
// a value decides what to do next, and status() says what went wrong.
// Not thread-safe; one owner.
#ifndef LAZYRAM_DAEMON_LOCAL_STREAM_READER_H_
#define LAZYRAM_DAEMON_LOCAL_STREAM_READER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"

namespace lazyram {

class StreamReader {
 public:
  // Reads `fd` (not owned) from byte `start` up to byte `size`.
  StreamReader(int fd, uint64_t size, uint64_t start);

  uint64_t position() const { return base_ + pos_; }
  uint64_t size() const { return size_; }
  bool ok() const { return status_.ok(); }
  const absl::Status& status() const { return status_; }
  bool at_end() const { return position() >= size_; }

  uint8_t U8();
  uint16_t Be16();
  uint32_t Be32();
  uint64_t Be64();
  std::string Bytes(size_t n);
  void Skip(uint64_t n);
  // The next byte without consuming it; -1 at the end or after an error.
  int Peek();

 private:
  // Makes `n` (at most 4096) bytes available at pos_; false (and a sticky
  // error) if the file ends first.
  bool Need(size_t n);

  static constexpr size_t kBufferSize = 8 << 20;
  const int fd_;
  const uint64_t size_;
  const size_t capacity_;  // kBufferSize, or less for a small stream
  std::unique_ptr<uint8_t[]> buf_;
  uint64_t base_;    // file offset of buf_[0]
  size_t pos_ = 0;   // read position within buf_
  size_t fill_ = 0;  // valid bytes in buf_
  absl::Status status_;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_LOCAL_STREAM_READER_H_
