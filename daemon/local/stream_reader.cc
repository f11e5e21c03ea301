#include "daemon/local/stream_reader.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "daemon/base/errno_status.h"

namespace lazyram {

StreamReader::StreamReader(int fd, uint64_t size, uint64_t start)
    : fd_(fd),
      size_(size),
      capacity_(static_cast<size_t>(
          std::clamp<uint64_t>(size > start ? size - start : 0, 4096, kBufferSize))),
      buf_(new uint8_t[capacity_]),
      base_(start) {}

bool StreamReader::Need(size_t n) {
  if (!status_.ok()) return false;
  if (fill_ - pos_ >= n) return true;
  // Keep the unread tail, then fill the rest of the buffer.
  std::memmove(buf_.get(), buf_.get() + pos_, fill_ - pos_);
  base_ += pos_;
  fill_ -= pos_;
  pos_ = 0;
  while (fill_ < n) {
    const uint64_t left = base_ + fill_ < size_ ? size_ - (base_ + fill_) : 0;
    const size_t want = static_cast<size_t>(std::min<uint64_t>(capacity_ - fill_, left));
    if (want == 0) {
      status_ = absl::DataLossError(absl::StrCat("the stream ends at byte ", size_));
      return false;
    }
    const ssize_t got = pread(fd_, buf_.get() + fill_, want, static_cast<off_t>(base_ + fill_));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      status_ = ErrnoStatus(errno, "reading the stream");
      return false;
    }
    if (got == 0) {
      status_ = absl::DataLossError(absl::StrCat("the stream ends at byte ", base_ + fill_));
      return false;
    }
    fill_ += static_cast<size_t>(got);
  }
  return true;
}

uint8_t StreamReader::U8() {
  if (!Need(1)) return 0;
  return buf_[pos_++];
}

uint16_t StreamReader::Be16() {
  if (!Need(2)) return 0;
  const uint8_t* p = buf_.get() + pos_;
  pos_ += 2;
  return static_cast<uint16_t>(p[0] << 8 | p[1]);
}

uint32_t StreamReader::Be32() {
  if (!Need(4)) return 0;
  const uint8_t* p = buf_.get() + pos_;
  pos_ += 4;
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
}

uint64_t StreamReader::Be64() {
  const uint64_t hi = Be32();
  return hi << 32 | Be32();
}

std::string StreamReader::Bytes(size_t n) {
  if (!Need(n)) return std::string();
  std::string out(reinterpret_cast<const char*>(buf_.get() + pos_), n);
  pos_ += n;
  return out;
}

void StreamReader::Skip(uint64_t n) {
  if (!status_.ok()) return;
  if (fill_ - pos_ >= n) {
    pos_ += static_cast<size_t>(n);
    return;
  }
  const uint64_t target = position() + n;
  if (target > size_) {
    status_ = absl::DataLossError(absl::StrCat("the stream ends at byte ", size_));
    return;
  }
  base_ = target;
  pos_ = fill_ = 0;
}

int StreamReader::Peek() {
  if (at_end() || !Need(1)) return -1;
  return buf_[pos_];
}

}  // namespace lazyram
