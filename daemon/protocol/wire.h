// Internal to daemon/protocol/: the building blocks every frame codec
// (protocol.cc, handshake_frames.cc, page_frames.cc) is written with —
// little-endian scalars, a bounds-checked body Reader, the error messages
// decoders return, and the frame header an encoder starts with. Not part of
// the wire contract (that is protocol.h); nothing outside this folder
// includes it. Pure functions and a value type: thread-compatible.
#ifndef LAZYRAM_DAEMON_PROTOCOL_WIRE_H_
#define LAZYRAM_DAEMON_PROTOCOL_WIRE_H_

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "daemon/protocol/protocol.h"

namespace lazyram::protocol::wire {

// --- Little-endian scalars ---------------------------------------------------

template <typename T>
T SwapToLittle(T v) {  // its own inverse, so it serves loads and stores
  static_assert(std::is_unsigned_v<T>);
  if constexpr (std::endian::native == std::endian::big) {
    if constexpr (sizeof(T) == 2) return __builtin_bswap16(v);
    if constexpr (sizeof(T) == 4) return __builtin_bswap32(v);
    if constexpr (sizeof(T) == 8) return __builtin_bswap64(v);
  }
  return v;
}

template <typename T>
void Store(uint8_t* p, T v) {
  v = SwapToLittle(v);
  std::memcpy(p, &v, sizeof(v));
}

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(v));
  return SwapToLittle(v);
}

template <typename T>
void Put(std::string* out, T v) {
  v = SwapToLittle(v);
  out->append(reinterpret_cast<const char*>(&v), sizeof(v));
}

inline void PutBytes(std::string* out, std::span<const uint8_t> bytes) {
  out->append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// Bounds-checked cursor over a frame body. A read that would pass the end
// returns false and consumes nothing, so decoders chain reads with || and
// report truncation once.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> bytes) : bytes_(bytes) {}

  template <typename T>
  [[nodiscard]] bool Read(T* v) {
    if (remaining() < sizeof(T)) return false;
    *v = Load<T>(bytes_.data() + pos_);
    pos_ += sizeof(T);
    return true;
  }

  [[nodiscard]] bool ReadBytes(size_t n, std::span<const uint8_t>* v) {
    if (remaining() < n) return false;
    *v = bytes_.subspan(pos_, n);
    pos_ += n;
    return true;
  }

  size_t remaining() const { return bytes_.size() - pos_; }

 private:
  std::span<const uint8_t> bytes_;
  size_t pos_ = 0;
};

// A broken caller contract in an encoder that would otherwise read out of
// bounds. Encoders cannot return a Status, and a corrupt frame is worse than
// a crash.
[[noreturn]] void ContractViolation(const char* what);

// kInvalidArgument "<frame>: <what>", the error of every malformed body.
absl::Status Malformed(absl::string_view frame, absl::string_view what);
absl::Status Truncated(absl::string_view frame);
absl::Status TrailingBytes(absl::string_view frame, size_t n);

// Appends the header of a frame whose body of `body_len` bytes follows.
void AppendHeader(FrameType type, uint64_t tag, size_t body_len, std::string* out);

}  // namespace lazyram::protocol::wire

#endif  // LAZYRAM_DAEMON_PROTOCOL_WIRE_H_
