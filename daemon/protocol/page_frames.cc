// The page traffic: READ, and PAGES with its zero-page elision and
// checksum, built by copying (AppendPages) or in place (SealPages).
// Declared in protocol.h.
#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "daemon/protocol/protocol.h"
#include "daemon/protocol/wire.h"

// Inlined so the streaming XXH3 state can live on the stack without
// depending on the shared library's private struct layout.
#define XXH_INLINE_ALL
#include <xxhash.h>

namespace lazyram::protocol {

using wire::AppendHeader;
using wire::ContractViolation;
using wire::Malformed;
using wire::Put;
using wire::PutBytes;
using wire::Reader;
using wire::Store;
using wire::TrailingBytes;
using wire::Truncated;

namespace {

constexpr size_t kReadBodySize = 24;
constexpr size_t kReadReservedSize = 7;
constexpr size_t kPagesFixedSize = 24;  // region .. checksum

// XXH3-64 over a sequence of byte ranges; equal to XXH3-64 of their
// concatenation, which is what lets AppendPages hash pages as it copies them.
class Checksum {
 public:
  Checksum() {
    XXH3_INITSTATE(&state_);
    XXH3_64bits_reset(&state_);
  }
  void Update(std::span<const uint8_t> bytes) {
    XXH3_64bits_update(&state_, bytes.data(), bytes.size());
  }
  uint64_t Digest() const { return XXH3_64bits_digest(&state_); }

 private:
  XXH3_state_t state_;
};

}  // namespace

// --- READ --------------------------------------------------------------------

void AppendRead(uint64_t tag, const ReadRequest& request, std::string* out) {
  out->reserve(out->size() + kHeaderSize + kReadBodySize);
  AppendHeader(FrameType::kRead, tag, kReadBodySize, out);
  Put(out, request.region);
  Put(out, request.count);
  Put(out, request.first_page);
  Put(out, static_cast<uint8_t>(request.priority));
  out->append(kReadReservedSize, '\0');
}

absl::StatusOr<ReadRequest> DecodeRead(std::span<const uint8_t> body) {
  constexpr absl::string_view kFrame = "READ";
  Reader r(body);
  ReadRequest request;
  uint8_t priority = 0;
  std::span<const uint8_t> reserved;
  if (!r.Read(&request.region) || !r.Read(&request.count) || !r.Read(&request.first_page) ||
      !r.Read(&priority) || !r.ReadBytes(kReadReservedSize, &reserved)) {
    return Truncated(kFrame);
  }
  if (r.remaining() != 0) return TrailingBytes(kFrame, r.remaining());
  if (priority > static_cast<uint8_t>(Priority::kBulk)) {
    return Malformed(kFrame, absl::StrCat("unknown priority ", priority));
  }
  request.priority = static_cast<Priority>(priority);
  if (std::any_of(reserved.begin(), reserved.end(), [](uint8_t b) { return b != 0; })) {
    return Malformed(kFrame, "reserved bits set");
  }
  // kOutOfRange, not kInvalidArgument: the server answers these with
  // ErrorCode::kOutOfRange.
  if (request.count == 0 || request.count > kMaxPagesPerRequest) {
    return absl::OutOfRangeError(
        absl::StrCat("READ: count ", request.count, " not in [1, ", kMaxPagesPerRequest, "]"));
  }
  if (request.first_page > std::numeric_limits<uint64_t>::max() - request.count) {
    return absl::OutOfRangeError(absl::StrCat("READ: first page ", request.first_page, " + count ",
                                              request.count, " overflows"));
  }
  return request;
}

// --- PAGES -------------------------------------------------------------------

void AppendPages(uint64_t tag, uint32_t region, uint64_t first_page, uint32_t count,
                 std::span<const uint8_t> pages, std::string* out) {
  if (count == 0 || count > kMaxPagesPerRequest) ContractViolation("AppendPages: bad count");
  if (pages.size() != size_t{count} * kPageSize) ContractViolation("AppendPages: bad page bytes");

  // Flags first, so the frame's size is known and `out` grows exactly once.
  uint8_t flags[kMaxPagesPerRequest];
  size_t data_pages = 0;
  for (uint32_t i = 0; i < count; ++i) {
    const bool zero = IsZeroPage(pages.subspan(size_t{i} * kPageSize, kPageSize));
    flags[i] = static_cast<uint8_t>(zero ? PageFlag::kZero : PageFlag::kData);
    data_pages += zero ? 0 : 1;
  }
  const size_t body_len = kPagesFixedSize + count + data_pages * kPageSize;
  out->reserve(out->size() + kHeaderSize + body_len);
  AppendHeader(FrameType::kPages, tag, body_len, out);
  Put(out, region);
  Put(out, count);
  Put(out, first_page);
  const size_t checksum_at = out->size();
  Put<uint64_t>(out, 0);  // patched below, once the pages are hashed

  Checksum checksum;
  const std::span<const uint8_t> flag_bytes(flags, count);
  PutBytes(out, flag_bytes);
  checksum.Update(flag_bytes);
  for (uint32_t i = 0; i < count; ++i) {
    if (flags[i] != static_cast<uint8_t>(PageFlag::kData)) continue;
    // Hash each page right after copying it, while it is still in cache.
    const std::span<const uint8_t> page = pages.subspan(size_t{i} * kPageSize, kPageSize);
    PutBytes(out, page);
    checksum.Update(page);
  }
  Store<uint64_t>(reinterpret_cast<uint8_t*>(out->data() + checksum_at), checksum.Digest());
}

size_t PagesFrameCapacity(uint32_t count) {
  return PagesPayloadOffset(count) + size_t{count} * kPageSize;
}

size_t PagesPayloadOffset(uint32_t count) { return kHeaderSize + kPagesFixedSize + count; }

size_t SealPages(uint64_t tag, uint32_t region, uint64_t first_page, uint32_t count,
                 std::span<uint8_t> frame) {
  if (count == 0 || count > kMaxPagesPerRequest) ContractViolation("SealPages: bad count");
  if (frame.size() < PagesFrameCapacity(count)) ContractViolation("SealPages: frame too small");
  uint8_t* flags = frame.data() + kHeaderSize + kPagesFixedSize;
  uint8_t* payload = frame.data() + PagesPayloadOffset(count);
  // Elide zero pages by sliding later data pages down; with no zero page
  // (the common case for real RAM) nothing moves.
  size_t data_pages = 0;
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t* page = payload + size_t{i} * kPageSize;
    const bool zero = IsZeroPage(std::span(page, kPageSize));
    flags[i] = static_cast<uint8_t>(zero ? PageFlag::kZero : PageFlag::kData);
    if (zero) continue;
    if (data_pages != i) std::memmove(payload + data_pages * kPageSize, page, kPageSize);
    ++data_pages;
  }
  Checksum checksum;
  checksum.Update(std::span<const uint8_t>(flags, count));
  checksum.Update(std::span<const uint8_t>(payload, data_pages * kPageSize));
  const size_t body_len = kPagesFixedSize + count + data_pages * kPageSize;
  EncodeHeader({.body_len = static_cast<uint32_t>(body_len), .type = FrameType::kPages, .tag = tag},
               frame.data());
  uint8_t* fixed = frame.data() + kHeaderSize;
  Store<uint32_t>(fixed, region);
  Store<uint32_t>(fixed + 4, count);
  Store<uint64_t>(fixed + 8, first_page);
  Store<uint64_t>(fixed + 16, checksum.Digest());
  return kHeaderSize + body_len;
}

absl::StatusOr<PagesView> DecodePages(std::span<const uint8_t> body) {
  constexpr absl::string_view kFrame = "PAGES";
  Reader r(body);
  PagesView view;
  if (!r.Read(&view.region) || !r.Read(&view.count) || !r.Read(&view.first_page) ||
      !r.Read(&view.checksum)) {
    return Truncated(kFrame);
  }
  if (view.count == 0 || view.count > kMaxPagesPerRequest) {
    return Malformed(kFrame, absl::StrCat("count ", view.count));
  }
  if (view.first_page > std::numeric_limits<uint64_t>::max() - view.count) {
    return Malformed(kFrame, "first page + count overflows");
  }
  if (!r.ReadBytes(view.count, &view.flags)) return Truncated(kFrame);
  size_t data_pages = 0;
  for (uint32_t i = 0; i < view.count; ++i) {
    const uint8_t flag = view.flags[i];
    if (flag > static_cast<uint8_t>(PageFlag::kZero)) {
      return Malformed(kFrame, absl::StrCat("page ", i, " has unknown flag ", flag));
    }
    data_pages += flag == static_cast<uint8_t>(PageFlag::kData) ? 1 : 0;
  }
  const size_t payload_len = data_pages * kPageSize;
  if (r.remaining() != payload_len) {
    return Malformed(kFrame, absl::StrCat("payload is ", r.remaining(), " bytes, ", data_pages,
                                          " data pages need ", payload_len));
  }
  if (!r.ReadBytes(payload_len, &view.payload)) return Truncated(kFrame);
  const uint64_t actual = PagesChecksum(view.flags, view.payload);
  if (actual != view.checksum) {
    return absl::DataLossError(absl::StrCat("PAGES: checksum mismatch for region ", view.region,
                                            " pages [", view.first_page, ", +", view.count, ")"));
  }
  return view;
}

uint64_t PagesChecksum(std::span<const uint8_t> flags, std::span<const uint8_t> payload) {
  Checksum checksum;
  checksum.Update(flags);
  checksum.Update(payload);
  return checksum.Digest();
}

bool IsZeroPage(std::span<const uint8_t> page) {
  // memcmp against a zero page uses the C library's vectorized compare and
  // stops at the first non-zero byte, which is usually early in a data page.
  alignas(64) static constexpr uint8_t kZeros[kPageSize] = {};
  while (!page.empty()) {
    const size_t n = std::min<size_t>(page.size(), kPageSize);
    if (std::memcmp(page.data(), kZeros, n) != 0) return false;
    page = page.subspan(n);
  }
  return true;
}

}  // namespace lazyram::protocol
