// libFuzzer target for the page-protocol codec (daemon/protocol/protocol.h): what a
// hostile page server or client can put on the wire.
//
// The first input byte picks a mode; the rest is its input:
//   0..5  one decoder on the rest as a body (header, HELLO, WELCOME, READ,
//         PAGES, ERROR); a body that decodes is re-encoded, decoded again
//         and compared, and a PAGES view must lie inside the input;
//   6     SealPages and AppendPages on fuzzed page contents: same bytes,
//         and the frame decodes to the same pages;
//   7     a byte stream as a peer sends it: frames one after another, the
//         first under the handshake limit, the rest under kMaxFrameBody,
//         each body handed to the decoder of its type;
//   8..10 the authentication bodies (CHALLENGE, AUTH, AUTH_OK), as 1..5.
// Any broken property aborts (a crash for libFuzzer); see docs/fuzzing.md.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "daemon/protocol/protocol.h"

namespace lazyram::protocol {
namespace {

using Bytes = std::span<const uint8_t>;

#define FUZZ_CHECK(cond)                                                            \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)

Bytes AsBytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Splits an encoded frame into its header and body, checking the header
// says what the encoder meant.
Bytes BodyOf(const std::string& frame, FrameType type, uint64_t tag) {
  FUZZ_CHECK(frame.size() >= kHeaderSize);
  absl::StatusOr<FrameHeader> header = DecodeHeader(AsBytes(frame), kMaxHandshakeBody);
  FUZZ_CHECK(header.ok());
  FUZZ_CHECK(header->type == type);
  FUZZ_CHECK(header->tag == tag);
  FUZZ_CHECK(header->body_len == frame.size() - kHeaderSize);
  return AsBytes(frame).subspan(kHeaderSize);
}

bool SameBytes(Bytes a, Bytes b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
}

bool Inside(Bytes part, Bytes whole) {
  return part.data() >= whole.data() && part.size() <= whole.size() &&
         part.data() + part.size() <= whole.data() + whole.size();
}

void FuzzHeader(Bytes in) {
  absl::StatusOr<FrameHeader> small = DecodeHeader(in, kMaxFrameBody);
  absl::StatusOr<FrameHeader> large = DecodeHeader(in, kMaxHandshakeBody);
  if (small.ok()) FUZZ_CHECK(large.ok());  // a larger limit accepts more
  if (!large.ok()) return;
  FUZZ_CHECK(large->body_len <= kMaxHandshakeBody);
  if (small.ok()) {
    FUZZ_CHECK(small->body_len <= kMaxFrameBody);
    FUZZ_CHECK(small->body_len == large->body_len && small->type == large->type &&
               small->flags == large->flags && small->tag == large->tag);
  } else {
    FUZZ_CHECK(small.status().code() == absl::StatusCode::kResourceExhausted);
    FUZZ_CHECK(large->body_len > kMaxFrameBody);
  }
  uint8_t again[kHeaderSize];
  EncodeHeader(*large, again);
  FUZZ_CHECK(SameBytes(Bytes(again, kHeaderSize), in.first(kHeaderSize)));
}

void FuzzHello(Bytes body) {
  absl::StatusOr<Hello> hello = DecodeHello(body);
  if (!hello.ok()) return;
  std::string frame;
  AppendHello(*hello, &frame);
  Bytes again = BodyOf(frame, FrameType::kHello, 0);
  FUZZ_CHECK(SameBytes(again, body));  // one encoding per HELLO
  absl::StatusOr<Hello> round = DecodeHello(again);
  FUZZ_CHECK(round.ok() && round->version == hello->version && round->features == hello->features);
}

void FuzzWelcome(Bytes body) {
  absl::StatusOr<Welcome> welcome = DecodeWelcome(body);
  if (!welcome.ok()) return;
  FUZZ_CHECK(welcome->regions.size() <= kMaxRegions);
  size_t extents = 0;
  for (const RegionInfo& r : welcome->regions) {
    FUZZ_CHECK(!r.name.empty() && r.name.size() <= kMaxRegionName);
    uint64_t next_free = 0;
    for (const ZeroExtent& e : r.zero_extents) {
      FUZZ_CHECK(e.page_count > 0 && e.first_page >= next_free);
      FUZZ_CHECK(e.first_page + e.page_count <= r.page_count());
      next_free = e.first_page + e.page_count;
    }
    extents += r.zero_extents.size();
  }
  FUZZ_CHECK(extents <= kMaxZeroExtents);
  std::string frame;
  AppendWelcome(*welcome, &frame);
  Bytes again = BodyOf(frame, FrameType::kWelcome, 0);
  FUZZ_CHECK(SameBytes(again, body));
  absl::StatusOr<Welcome> round = DecodeWelcome(again);
  FUZZ_CHECK(round.ok());
  FUZZ_CHECK(round->version == welcome->version && round->features == welcome->features &&
             round->page_size == welcome->page_size);
  FUZZ_CHECK(round->regions.size() == welcome->regions.size());
  for (size_t i = 0; i < round->regions.size(); ++i) {
    FUZZ_CHECK(round->regions[i].name == welcome->regions[i].name);
    FUZZ_CHECK(round->regions[i].size == welcome->regions[i].size);
    FUZZ_CHECK(round->regions[i].zero_extents == welcome->regions[i].zero_extents);
  }
}

void FuzzRead(Bytes body, uint64_t tag) {
  absl::StatusOr<ReadRequest> read = DecodeRead(body);
  if (!read.ok()) return;
  FUZZ_CHECK(read->count >= 1 && read->count <= kMaxPagesPerRequest);
  FUZZ_CHECK(read->first_page + read->count >= read->first_page);  // no wrap
  std::string frame;
  AppendRead(tag, *read, &frame);
  Bytes again = BodyOf(frame, FrameType::kRead, tag);
  FUZZ_CHECK(SameBytes(again, body));
  absl::StatusOr<ReadRequest> round = DecodeRead(again);
  FUZZ_CHECK(round.ok() && round->region == read->region && round->count == read->count &&
             round->first_page == read->first_page && round->priority == read->priority);
}

void FuzzError(Bytes body, uint64_t tag) {
  absl::StatusOr<ErrorReply> error = DecodeError(body);
  if (!error.ok()) return;
  FUZZ_CHECK(error->message.size() <= kMaxErrorMessage);
  FUZZ_CHECK(ErrorCodeName(error->code) != "UNKNOWN");
  FUZZ_CHECK(!ErrorToStatus(*error).ok());
  std::string frame;
  AppendError(tag, *error, &frame);
  Bytes again = BodyOf(frame, FrameType::kError, tag);
  FUZZ_CHECK(SameBytes(again, body));
  absl::StatusOr<ErrorReply> round = DecodeError(again);
  FUZZ_CHECK(round.ok() && round->code == error->code && round->message == error->message);
}

// The fixed-size authentication frames: exact length only, and a round
// trip gives the same bytes and value.
template <typename T, typename Decode, typename Append, typename Same>
void FuzzAuthFrame(Bytes body, FrameType type, Decode decode, Append append, Same same) {
  absl::StatusOr<T> value = decode(body);
  if (!value.ok()) {
    FUZZ_CHECK(value.status().code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  std::string frame;
  append(*value, &frame);
  Bytes again = BodyOf(frame, type, 0);
  FUZZ_CHECK(SameBytes(again, body));
  absl::StatusOr<T> round = decode(again);
  FUZZ_CHECK(round.ok() && same(*round, *value));
}

void FuzzChallenge(Bytes body) {
  FuzzAuthFrame<Challenge>(
      body, FrameType::kChallenge, DecodeChallenge, AppendChallenge,
      [](const Challenge& a, const Challenge& b) { return a.server_nonce == b.server_nonce; });
}

void FuzzAuth(Bytes body) {
  FuzzAuthFrame<AuthRequest>(body, FrameType::kAuth, DecodeAuth, AppendAuth,
                             [](const AuthRequest& a, const AuthRequest& b) {
                               return a.client_nonce == b.client_nonce && a.proof == b.proof;
                             });
}

void FuzzAuthOk(Bytes body) {
  FuzzAuthFrame<AuthOk>(body, FrameType::kAuthOk, DecodeAuthOk, AppendAuthOk,
                        [](const AuthOk& a, const AuthOk& b) { return a.proof == b.proof; });
}

// The pages a PAGES view stands for, count * kPageSize bytes.
std::vector<uint8_t> Expand(const PagesView& view) {
  std::vector<uint8_t> pages(size_t{view.count} * kPageSize, 0);
  size_t next = 0;
  for (uint32_t i = 0; i < view.count; ++i) {
    if (view.flags[i] != static_cast<uint8_t>(PageFlag::kData)) continue;
    std::memcpy(pages.data() + size_t{i} * kPageSize, view.payload.data() + next, kPageSize);
    next += kPageSize;
  }
  FUZZ_CHECK(next == view.payload.size());
  return pages;
}

// Encodes `pages` both ways (AppendPages, SealPages) and checks the frames
// are equal and decode back to `pages`.
void CheckEncodings(uint64_t tag, uint32_t region, uint64_t first_page, uint32_t count,
                    const std::vector<uint8_t>& pages) {
  std::string appended = "xy";  // AppendPages appends: bytes already there stay
  AppendPages(tag, region, first_page, count, pages, &appended);
  FUZZ_CHECK(appended.substr(0, 2) == "xy");
  appended.erase(0, 2);

  std::vector<uint8_t> sealed(PagesFrameCapacity(count));
  std::memcpy(sealed.data() + PagesPayloadOffset(count), pages.data(), pages.size());
  const size_t sealed_len = SealPages(tag, region, first_page, count, sealed);
  FUZZ_CHECK(sealed_len <= sealed.size());
  FUZZ_CHECK(SameBytes(Bytes(sealed.data(), sealed_len), AsBytes(appended)));

  FUZZ_CHECK(appended.size() <= kHeaderSize + kMaxFrameBody);
  absl::StatusOr<FrameHeader> header = DecodeHeader(AsBytes(appended), kMaxFrameBody);
  FUZZ_CHECK(header.ok() && header->type == FrameType::kPages && header->tag == tag);
  const Bytes body = AsBytes(appended).subspan(kHeaderSize);
  FUZZ_CHECK(header->body_len == body.size());
  absl::StatusOr<PagesView> view = DecodePages(body);
  FUZZ_CHECK(view.ok());
  FUZZ_CHECK(view->region == region && view->first_page == first_page && view->count == count);
  for (uint32_t i = 0; i < count; ++i) {  // zero pages, and only they, are elided
    const bool zero = IsZeroPage(Bytes(pages).subspan(size_t{i} * kPageSize, kPageSize));
    FUZZ_CHECK(view->flags[i] == static_cast<uint8_t>(zero ? PageFlag::kZero : PageFlag::kData));
  }
  FUZZ_CHECK(Expand(*view) == pages);
}

void FuzzPages(Bytes body, uint64_t tag) {
  absl::StatusOr<PagesView> view = DecodePages(body);
  if (!view.ok()) return;
  FUZZ_CHECK(Inside(view->flags, body) && Inside(view->payload, body));
  FUZZ_CHECK(view->flags.size() == view->count);
  FUZZ_CHECK(view->count >= 1 && view->count <= kMaxPagesPerRequest);
  FUZZ_CHECK(view->payload.size() % kPageSize == 0);
  FUZZ_CHECK(PagesChecksum(view->flags, view->payload) == view->checksum);
  const std::vector<uint8_t> pages = Expand(*view);
  CheckEncodings(tag, view->region, view->first_page, view->count, pages);
  // With no all-zero data page the encoding is the input itself.
  bool canonical = true;
  for (size_t at = 0; at < view->payload.size(); at += kPageSize) {
    canonical = canonical && !IsZeroPage(view->payload.subspan(at, kPageSize));
  }
  if (canonical) {
    std::string again;
    AppendPages(tag, view->region, view->first_page, view->count, pages, &again);
    FUZZ_CHECK(SameBytes(AsBytes(again).subspan(kHeaderSize), body));
  }
}

// Mode 6: page contents from the input. A 12-byte preamble (page count,
// region, first page); then per page a shape byte: zero, one non-zero byte
// at a fuzzed position (the zero check's edge cases), or filled with the
// input's next bytes repeated.
void FuzzEncode(Bytes in) {
  if (in.size() < 12) return;
  const uint32_t count = in[0] % kMaxPagesPerRequest + 1;
  uint32_t region;
  uint64_t first_page;
  std::memcpy(&region, in.data() + 1, 3);
  region &= 0xffffff;
  std::memcpy(&first_page, in.data() + 4, 8);
  if (first_page > UINT64_MAX - count) first_page = UINT64_MAX - count;
  in = in.subspan(12);
  std::vector<uint8_t> pages(size_t{count} * kPageSize, 0);
  for (uint32_t i = 0; i < count && !in.empty(); ++i) {
    uint8_t* page = pages.data() + size_t{i} * kPageSize;
    const uint8_t shape = in[0];
    in = in.subspan(1);
    if (shape % 3 == 1 && in.size() >= 3) {  // one byte set
      const size_t at = (size_t{in[0]} << 8 | in[1]) % kPageSize;
      page[at] = in[2];
      in = in.subspan(3);
    } else if (shape % 3 == 2 && !in.empty()) {  // a fill pattern
      const size_t n = std::min<size_t>(in.size(), shape / 3 + 1);
      for (size_t b = 0; b < kPageSize; ++b) page[b] = in[b % n];
      in = in.subspan(n);
    }
  }
  CheckEncodings(/*tag=*/first_page ^ count, region, first_page, count, pages);
}

// Mode 7: frames back to back, as a connection delivers them.
void FuzzStream(Bytes in) {
  uint32_t limit = kMaxHandshakeBody;
  while (in.size() >= kHeaderSize) {
    absl::StatusOr<FrameHeader> header = DecodeHeader(in, limit);
    if (!header.ok()) return;  // a real peer closes the connection here
    limit = kMaxFrameBody;
    if (in.size() - kHeaderSize < header->body_len) return;  // still arriving
    const Bytes body = in.subspan(kHeaderSize, header->body_len);
    switch (header->type) {
      case FrameType::kHello:
        FuzzHello(body);
        break;
      case FrameType::kWelcome:
        FuzzWelcome(body);
        break;
      case FrameType::kRead:
        FuzzRead(body, header->tag);
        break;
      case FrameType::kPages:
        FuzzPages(body, header->tag);
        break;
      case FrameType::kError:
        FuzzError(body, header->tag);
        break;
      case FrameType::kChallenge:
        FuzzChallenge(body);
        break;
      case FrameType::kAuth:
        FuzzAuth(body);
        break;
      case FrameType::kAuthOk:
        FuzzAuthOk(body);
        break;
    }
    in = in.subspan(kHeaderSize + header->body_len);
  }
}

}  // namespace
}  // namespace lazyram::protocol

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lazyram::protocol;
  if (size == 0) return 0;
  const Bytes in(data + 1, size - 1);
  switch (data[0] % 11) {
    case 0:
      FuzzHeader(in);
      break;
    case 1:
      FuzzHello(in);
      break;
    case 2:
      FuzzWelcome(in);
      break;
    case 3:
      FuzzRead(in, /*tag=*/size);
      break;
    case 4:
      FuzzPages(in, /*tag=*/size);
      break;
    case 5:
      FuzzError(in, /*tag=*/size);
      break;
    case 6:
      FuzzEncode(in);
      break;
    case 7:
      FuzzStream(in);
      break;
    case 8:
      FuzzChallenge(in);
      break;
    case 9:
      FuzzAuth(in);
      break;
    case 10:
      FuzzAuthOk(in);
      break;
  }
  return 0;
}
