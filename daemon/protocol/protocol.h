// The lazyram page protocol: constants, frame layouts and the codec that
// both ends (the page server and the daemon's fetcher) share.
// docs/protocol.md is the prose version of this header; keep them in step.
//
// Every integer is little-endian on the wire. Every frame is a 16-byte
// header followed by `body_len` bytes of body:
//
//   header  := u32 body_len | u8 type | u8 flags | u16 reserved(0) | u64 tag
//
// The codec is pure: it never does I/O, never allocates more than a frame,
// and validates every length and index before it is used. All functions are
// thread-compatible (no shared state).
#ifndef LAZYRAM_DAEMON_PROTOCOL_PROTOCOL_H_
#define LAZYRAM_DAEMON_PROTOCOL_PROTOCOL_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lazyram::protocol {

inline constexpr uint64_t kMagic = 0x314d4152595a414cULL;  // "LAZYRAM1"
inline constexpr uint16_t kVersion = 1;
inline constexpr uint32_t kPageSize = 4096;
inline constexpr size_t kHeaderSize = 16;

// A READ asks for at most this many pages; a PAGES reply carries as many.
inline constexpr uint32_t kMaxPagesPerRequest = 256;  // 1 MiB
// Largest body of any frame after the handshake.
inline constexpr uint32_t kMaxFrameBody =
    40 + kMaxPagesPerRequest + kMaxPagesPerRequest * kPageSize;
// The WELCOME frame (region table) may be larger; this is its hard cap.
inline constexpr uint32_t kMaxHandshakeBody = 8u << 20;
// Zero extents listed in WELCOME, over all regions. Past this the server
// stops listing; the per-page zero flag in PAGES still elides the rest.
inline constexpr uint32_t kMaxZeroExtents = 200000;
inline constexpr size_t kMaxRegionName = 255;
inline constexpr uint32_t kMaxRegions = 4096;
// An ERROR frame's message is at most this many bytes; AppendError truncates.
inline constexpr size_t kMaxErrorMessage = 1024;

// Feature bits, in HELLO (what the client asks for) and WELCOME (what is in
// use on this connection).
// kFeatureAuth: the client holds a shared key and authenticates with
// CHALLENGE / AUTH / AUTH_OK before WELCOME (docs/protocol.md,
// "Authentication").
inline constexpr uint32_t kFeatureAuth = 1u << 0;
// kFeatureDemandChannel (HELLO only, a hint; never confirmed in WELCOME):
// this connection carries the client's demand READs, so the server serves
// it ahead of bulk ones (lazyramd serve: on a thread of its own). A server
// that ignores it still serves the connection correctly.
inline constexpr uint32_t kFeatureDemandChannel = 1u << 1;
// Authentication: random nonces from each side, HMAC-SHA256 proofs.
inline constexpr size_t kNonceSize = 32;
inline constexpr size_t kProofSize = 32;

enum class FrameType : uint8_t {
  kHello = 1,    // client -> server, first frame
  kWelcome = 2,  // server -> client, answer to kHello
  kRead = 3,     // client -> server, tagged
  kPages = 4,    // server -> client, answer to kRead with the same tag
  kError = 5,    // server -> client, answer to any frame with its tag
  // Authentication (only after a HELLO with kFeatureAuth, to a server with
  // a key): the server challenges, the client proves, the server proves.
  kChallenge = 6,  // server -> client, answer to kHello
  kAuth = 7,       // client -> server, answer to kChallenge
  kAuthOk = 8,     // server -> client, answer to kAuth; kWelcome follows
};

enum class Priority : uint8_t {
  kDemand = 0,  // a consumer is waiting on this page
  kBulk = 1,    // background pull
};

// Per-page flag in a PAGES reply.
enum class PageFlag : uint8_t {
  kData = 0,  // 4096 bytes follow in the payload, in page order
  kZero = 1,  // the page is all zero; no bytes in the payload
};

// Typed errors carried by an ERROR frame.
enum class ErrorCode : uint32_t {
  kBadRequest = 1,    // malformed frame or unexpected type
  kBadVersion = 2,    // handshake magic or version mismatch
  kNoSuchRegion = 3,  // region index out of range
  kOutOfRange = 4,    // pages beyond the region's end, or count 0 / too large
  kIoError = 5,       // the server could not read its file
  kBusy = 6,          // too many requests in flight, or too many connections
  kAuthRequired = 7,  // the server has a key; the HELLO did not ask to authenticate
  kAuthFailed = 8,    // the client's proof is wrong: it does not hold the server's key
};

struct FrameHeader {
  uint32_t body_len = 0;
  FrameType type = FrameType::kHello;
  uint8_t flags = 0;
  uint64_t tag = 0;
};

struct Hello {
  uint16_t version = kVersion;
  uint32_t features = 0;
};

struct ZeroExtent {
  uint64_t first_page = 0;
  uint64_t page_count = 0;
  friend bool operator==(const ZeroExtent&, const ZeroExtent&) = default;
};

struct RegionInfo {
  std::string name;
  uint64_t size = 0;                     // bytes; the last page may be partial
  std::vector<ZeroExtent> zero_extents;  // sorted, non-overlapping, in range
  uint64_t page_count() const { return (size + kPageSize - 1) / kPageSize; }
};

struct Welcome {
  uint16_t version = kVersion;
  uint32_t features = 0;
  uint32_t page_size = kPageSize;
  std::vector<RegionInfo> regions;
};

struct ReadRequest {
  uint32_t region = 0;
  uint32_t count = 0;
  uint64_t first_page = 0;
  Priority priority = Priority::kDemand;
};

// A decoded PAGES frame. `flags` and `payload` point into the frame's body
// and are valid only as long as that buffer is.
struct PagesView {
  uint32_t region = 0;
  uint32_t count = 0;
  uint64_t first_page = 0;
  uint64_t checksum = 0;
  std::span<const uint8_t> flags;    // `count` entries of PageFlag
  std::span<const uint8_t> payload;  // kPageSize bytes per kData page
};

using Nonce = std::array<uint8_t, kNonceSize>;
using Proof = std::array<uint8_t, kProofSize>;

struct Challenge {
  Nonce server_nonce{};
};

struct AuthRequest {
  Nonce client_nonce{};
  Proof proof{};  // the client's proof over both nonces
};

struct AuthOk {
  Proof proof{};  // the server's proof over both nonces
};

struct ErrorReply {
  ErrorCode code = ErrorCode::kBadRequest;
  std::string message;
};

// --- Header ---------------------------------------------------------------

void EncodeHeader(const FrameHeader& header, uint8_t out[kHeaderSize]);
// Fails with kInvalidArgument on an unknown type or non-zero reserved
// bits, and with kResourceExhausted when body_len exceeds `max_body`.
absl::StatusOr<FrameHeader> DecodeHeader(std::span<const uint8_t> bytes, uint32_t max_body);

// --- Whole frames (header + body appended to *out) ------------------------
// Encoders trust their input: a Welcome is written as given (DecodeWelcome
// is where a region table is validated). AppendPages aborts when its
// arguments would make it read out of bounds.

void AppendHello(const Hello& hello, std::string* out);
void AppendWelcome(const Welcome& welcome, std::string* out);
void AppendRead(uint64_t tag, const ReadRequest& request, std::string* out);
void AppendError(uint64_t tag, const ErrorReply& error, std::string* out);
void AppendChallenge(const Challenge& challenge, std::string* out);
void AppendAuth(const AuthRequest& auth, std::string* out);
void AppendAuthOk(const AuthOk& ok, std::string* out);
// Appends a PAGES frame for `count` pages whose bytes are `pages`
// (count * kPageSize bytes; a short final page must be zero-padded by the
// caller). Zero pages are detected here and elided from the payload.
void AppendPages(uint64_t tag, uint32_t region, uint64_t first_page, uint32_t count,
                 std::span<const uint8_t> pages, std::string* out);

// In-place PAGES encoding, for a sender that reads page bytes straight into
// the frame: allocate PagesFrameCapacity(count) bytes, put count*kPageSize
// page bytes at PagesPayloadOffset(count), then SealPages writes the header,
// flags and checksum, elides zero pages by sliding later pages down, and
// returns the frame's final length. Same bytes as AppendPages.
size_t PagesFrameCapacity(uint32_t count);
size_t PagesPayloadOffset(uint32_t count);
size_t SealPages(uint64_t tag, uint32_t region, uint64_t first_page, uint32_t count,
                 std::span<uint8_t> frame);

// --- Bodies ---------------------------------------------------------------
// Each takes the body (without header) of a frame of the matching type.

absl::StatusOr<Hello> DecodeHello(std::span<const uint8_t> body);
absl::StatusOr<Welcome> DecodeWelcome(std::span<const uint8_t> body);
absl::StatusOr<ReadRequest> DecodeRead(std::span<const uint8_t> body);
// Validates the layout (flag values, payload length) and the checksum
// (kDataLoss on mismatch). Does not know region sizes: callers check
// region/first_page/count against their region table.
absl::StatusOr<PagesView> DecodePages(std::span<const uint8_t> body);
absl::StatusOr<ErrorReply> DecodeError(std::span<const uint8_t> body);
// Fixed-size bodies: anything but the exact length is kInvalidArgument.
absl::StatusOr<Challenge> DecodeChallenge(std::span<const uint8_t> body);
absl::StatusOr<AuthRequest> DecodeAuth(std::span<const uint8_t> body);
absl::StatusOr<AuthOk> DecodeAuthOk(std::span<const uint8_t> body);

// Checksum of a PAGES frame: XXH3-64 over the flag bytes, then the payload.
uint64_t PagesChecksum(std::span<const uint8_t> flags, std::span<const uint8_t> payload);

// Maps an ERROR frame to a Status for callers that surface it.
absl::Status ErrorToStatus(const ErrorReply& error);
std::string_view ErrorCodeName(ErrorCode code);

// True when every byte of `page` is zero.
bool IsZeroPage(std::span<const uint8_t> page);

}  // namespace lazyram::protocol

#endif  // LAZYRAM_DAEMON_PROTOCOL_PROTOCOL_H_
