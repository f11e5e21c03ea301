#include "daemon/protocol/wire.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace lazyram::protocol::wire {

[[noreturn]] void ContractViolation(const char* what) {
  std::fprintf(stderr, "lazyram::protocol: %s\n", what);
  std::abort();
}

absl::Status Malformed(absl::string_view frame, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(frame, ": ", what));
}

absl::Status Truncated(absl::string_view frame) { return Malformed(frame, "truncated body"); }

absl::Status TrailingBytes(absl::string_view frame, size_t n) {
  return Malformed(frame, absl::StrCat(n, " trailing bytes"));
}

void AppendHeader(FrameType type, uint64_t tag, size_t body_len, std::string* out) {
  uint8_t header[kHeaderSize];
  EncodeHeader({.body_len = static_cast<uint32_t>(body_len), .type = type, .tag = tag}, header);
  out->append(reinterpret_cast<const char*>(header), kHeaderSize);
}

}  // namespace lazyram::protocol::wire
