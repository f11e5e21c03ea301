#include "daemon/protocol/protocol.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "daemon/protocol/region_name.h"

// Inlined so the streaming XXH3 state can live on the stack without
// depending on the shared library's private struct layout.
#define XXH_INLINE_ALL
#include <xxhash.h>

namespace lazyram::protocol {
namespace {

constexpr size_t kHelloBodySize = 16;
constexpr size_t kWelcomeFixedSize = 24;  // magic .. region_count
constexpr size_t kRegionFixedSize = 14;   // name_len + size + zero_extent_count
constexpr size_t kZeroExtentSize = 16;
constexpr size_t kReadBodySize = 24;
constexpr size_t kReadReservedSize = 7;
constexpr size_t kPagesFixedSize = 24;  // region .. checksum
constexpr size_t kErrorFixedSize = 6;
constexpr size_t kChallengeBodySize = kNonceSize;
constexpr size_t kAuthBodySize = kNonceSize + kProofSize;
constexpr size_t kAuthOkBodySize = kProofSize;
// Region sizes are file sizes (off_t); this also keeps page_count() from
// overflowing.
constexpr uint64_t kMaxRegionSize = std::numeric_limits<int64_t>::max();

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

void PutBytes(std::string* out, std::span<const uint8_t> bytes) {
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

// A broken caller contract in an encoder that would otherwise read out of
// bounds. Encoders cannot return a Status, and a corrupt frame is worse than
// a crash.
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

// HELLO and WELCOME start with magic and version in every version of the
// protocol, so a peer can always tell "not lazyram" from "other version".
absl::Status CheckMagicAndVersion(absl::string_view frame, uint64_t magic, uint16_t version) {
  if (magic != kMagic) return Malformed(frame, absl::StrCat("bad magic 0x", absl::Hex(magic)));
  if (version != kVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat(frame, ": protocol version ", version, ", this side speaks ", kVersion));
  }
  return absl::OkStatus();
}

void AppendHeader(FrameType type, uint64_t tag, size_t body_len, std::string* out) {
  uint8_t header[kHeaderSize];
  EncodeHeader({.body_len = static_cast<uint32_t>(body_len), .type = type, .tag = tag}, header);
  out->append(reinterpret_cast<const char*>(header), kHeaderSize);
}

// Names become file names under the mount point.
absl::Status CheckRegionName(uint32_t index, absl::string_view name) {
  absl::string_view problem = RegionNameProblem(name);
  if (problem.empty()) return absl::OkStatus();
  return Malformed("WELCOME", absl::StrCat("region ", index, " name \"", absl::CHexEscape(name),
                                           "\" ", problem));
}

absl::Status ReadRegion(Reader& r, uint32_t index, uint64_t* total_extents, RegionInfo* region) {
  constexpr absl::string_view kFrame = "WELCOME";
  uint16_t name_len = 0;
  if (!r.Read(&name_len)) return Truncated(kFrame);
  if (name_len > kMaxRegionName) {
    return Malformed(kFrame, absl::StrCat("region ", index, " name is ", name_len, " bytes"));
  }
  std::span<const uint8_t> name;
  uint32_t extent_count = 0;
  if (!r.ReadBytes(name_len, &name) || !r.Read(&region->size) || !r.Read(&extent_count)) {
    return Truncated(kFrame);
  }
  region->name.assign(reinterpret_cast<const char*>(name.data()), name.size());
  if (absl::Status s = CheckRegionName(index, region->name); !s.ok()) return s;
  if (region->size > kMaxRegionSize) {
    return Malformed(kFrame, absl::StrCat("region ", index, " size ", region->size));
  }
  if (extent_count > kMaxZeroExtents - *total_extents) {
    return Malformed(kFrame, absl::StrCat("more than ", kMaxZeroExtents, " zero extents"));
  }
  *total_extents += extent_count;

  // The count is untrusted: reserve only what the body can actually hold.
  region->zero_extents.reserve(std::min<size_t>(extent_count, r.remaining() / kZeroExtentSize));
  const uint64_t pages = region->page_count();
  uint64_t next_free = 0;  // extents are sorted and disjoint: none may start below
  for (uint32_t i = 0; i < extent_count; ++i) {
    ZeroExtent e;
    if (!r.Read(&e.first_page) || !r.Read(&e.page_count)) return Truncated(kFrame);
    absl::string_view problem;
    if (e.page_count == 0) {
      problem = "is empty";
    } else if (e.first_page < next_free) {
      problem = "is unsorted or overlaps the previous one";
    } else if (e.first_page > pages || e.page_count > pages - e.first_page) {
      problem = "extends past the region's end";
    } else {
      next_free = e.first_page + e.page_count;
      region->zero_extents.push_back(e);
      continue;
    }
    return Malformed(kFrame, absl::StrCat("region ", index, " zero extent [", e.first_page, ", +",
                                          e.page_count, ") ", problem));
  }
  return absl::OkStatus();
}

// One row per ErrorCode: its name and the Status code a caller sees.
struct ErrorCodeInfo {
  ErrorCode code;
  std::string_view name;
  absl::StatusCode status;
};
constexpr ErrorCodeInfo kErrorCodes[] = {
    {ErrorCode::kBadRequest, "BAD_REQUEST", absl::StatusCode::kInvalidArgument},
    {ErrorCode::kBadVersion, "BAD_VERSION", absl::StatusCode::kFailedPrecondition},
    {ErrorCode::kNoSuchRegion, "NO_SUCH_REGION", absl::StatusCode::kNotFound},
    {ErrorCode::kOutOfRange, "OUT_OF_RANGE", absl::StatusCode::kOutOfRange},
    {ErrorCode::kIoError, "IO_ERROR", absl::StatusCode::kInternal},
    {ErrorCode::kBusy, "BUSY", absl::StatusCode::kResourceExhausted},
    {ErrorCode::kAuthRequired, "AUTH_REQUIRED", absl::StatusCode::kUnauthenticated},
    {ErrorCode::kAuthFailed, "AUTH_FAILED", absl::StatusCode::kUnauthenticated},
};

const ErrorCodeInfo* FindErrorCode(ErrorCode code) {
  for (const ErrorCodeInfo& info : kErrorCodes) {
    if (info.code == code) return &info;
  }
  return nullptr;
}

}  // namespace

// --- Header ------------------------------------------------------------------

void EncodeHeader(const FrameHeader& header, uint8_t out[kHeaderSize]) {
  Store<uint32_t>(out, header.body_len);
  out[4] = static_cast<uint8_t>(header.type);
  out[5] = header.flags;
  Store<uint16_t>(out + 6, 0);
  Store<uint64_t>(out + 8, header.tag);
}

absl::StatusOr<FrameHeader> DecodeHeader(std::span<const uint8_t> bytes, uint32_t max_body) {
  if (bytes.size() < kHeaderSize) {
    return Malformed("header", absl::StrCat("only ", bytes.size(), " bytes"));
  }
  FrameHeader header;
  header.body_len = Load<uint32_t>(bytes.data());
  const uint8_t type = bytes[4];
  header.flags = bytes[5];
  const uint16_t reserved = Load<uint16_t>(bytes.data() + 6);
  header.tag = Load<uint64_t>(bytes.data() + 8);
  // Frame types are numbered contiguously from kHello to kAuthOk.
  if (type < static_cast<uint8_t>(FrameType::kHello) ||
      type > static_cast<uint8_t>(FrameType::kAuthOk)) {
    return Malformed("header", absl::StrCat("unknown frame type ", type));
  }
  header.type = static_cast<FrameType>(type);
  if (reserved != 0) return Malformed("header", "reserved bits set");
  if (header.body_len > max_body) {
    return absl::ResourceExhaustedError(absl::StrCat("header: body of ", header.body_len,
                                                     " bytes exceeds the limit of ", max_body));
  }
  return header;
}

// --- Encoders ----------------------------------------------------------------

void AppendHello(const Hello& hello, std::string* out) {
  out->reserve(out->size() + kHeaderSize + kHelloBodySize);
  AppendHeader(FrameType::kHello, 0, kHelloBodySize, out);
  Put(out, kMagic);
  Put(out, hello.version);
  Put<uint16_t>(out, 0);
  Put(out, hello.features);
}

void AppendWelcome(const Welcome& welcome, std::string* out) {
  size_t body_len = kWelcomeFixedSize;
  for (const RegionInfo& region : welcome.regions) {
    body_len +=
        kRegionFixedSize + region.name.size() + region.zero_extents.size() * kZeroExtentSize;
  }
  out->reserve(out->size() + kHeaderSize + body_len);
  AppendHeader(FrameType::kWelcome, 0, body_len, out);
  Put(out, kMagic);
  Put(out, welcome.version);
  Put<uint16_t>(out, 0);
  Put(out, welcome.features);
  Put(out, welcome.page_size);
  Put(out, static_cast<uint32_t>(welcome.regions.size()));
  for (const RegionInfo& region : welcome.regions) {
    Put(out, static_cast<uint16_t>(region.name.size()));
    out->append(region.name);
    Put(out, region.size);
    Put(out, static_cast<uint32_t>(region.zero_extents.size()));
    for (const ZeroExtent& e : region.zero_extents) {
      Put(out, e.first_page);
      Put(out, e.page_count);
    }
  }
}

void AppendRead(uint64_t tag, const ReadRequest& request, std::string* out) {
  out->reserve(out->size() + kHeaderSize + kReadBodySize);
  AppendHeader(FrameType::kRead, tag, kReadBodySize, out);
  Put(out, request.region);
  Put(out, request.count);
  Put(out, request.first_page);
  Put(out, static_cast<uint8_t>(request.priority));
  out->append(kReadReservedSize, '\0');
}

void AppendError(uint64_t tag, const ErrorReply& error, std::string* out) {
  const std::string_view message = std::string_view(error.message).substr(0, kMaxErrorMessage);
  out->reserve(out->size() + kHeaderSize + kErrorFixedSize + message.size());
  AppendHeader(FrameType::kError, tag, kErrorFixedSize + message.size(), out);
  Put(out, static_cast<uint32_t>(error.code));
  Put(out, static_cast<uint16_t>(message.size()));
  out->append(message);
}

void AppendChallenge(const Challenge& challenge, std::string* out) {
  AppendHeader(FrameType::kChallenge, 0, kChallengeBodySize, out);
  PutBytes(out, challenge.server_nonce);
}

void AppendAuth(const AuthRequest& auth, std::string* out) {
  AppendHeader(FrameType::kAuth, 0, kAuthBodySize, out);
  PutBytes(out, auth.client_nonce);
  PutBytes(out, auth.proof);
}

void AppendAuthOk(const AuthOk& ok, std::string* out) {
  AppendHeader(FrameType::kAuthOk, 0, kAuthOkBodySize, out);
  PutBytes(out, ok.proof);
}

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

// --- Decoders ----------------------------------------------------------------

absl::StatusOr<Hello> DecodeHello(std::span<const uint8_t> body) {
  constexpr absl::string_view kFrame = "HELLO";
  Reader r(body);
  Hello hello;
  uint64_t magic = 0;
  uint16_t reserved = 0;
  if (!r.Read(&magic) || !r.Read(&hello.version)) return Truncated(kFrame);
  if (absl::Status s = CheckMagicAndVersion(kFrame, magic, hello.version); !s.ok()) return s;
  if (!r.Read(&reserved) || !r.Read(&hello.features)) return Truncated(kFrame);
  if (r.remaining() != 0) return TrailingBytes(kFrame, r.remaining());
  if (reserved != 0) return Malformed(kFrame, "reserved bits set");
  return hello;
}

absl::StatusOr<Welcome> DecodeWelcome(std::span<const uint8_t> body) {
  constexpr absl::string_view kFrame = "WELCOME";
  Reader r(body);
  Welcome welcome;
  uint64_t magic = 0;
  uint16_t reserved = 0;
  uint32_t region_count = 0;
  if (!r.Read(&magic) || !r.Read(&welcome.version)) return Truncated(kFrame);
  if (absl::Status s = CheckMagicAndVersion(kFrame, magic, welcome.version); !s.ok()) return s;
  if (!r.Read(&reserved) || !r.Read(&welcome.features) || !r.Read(&welcome.page_size) ||
      !r.Read(&region_count)) {
    return Truncated(kFrame);
  }
  if (reserved != 0) return Malformed(kFrame, "reserved bits set");
  if (welcome.page_size != kPageSize) {
    return absl::FailedPreconditionError(
        absl::StrCat("WELCOME: page size ", welcome.page_size, ", this side uses ", kPageSize));
  }
  if (region_count > kMaxRegions) {
    return Malformed(kFrame, absl::StrCat(region_count, " regions, at most ", kMaxRegions));
  }

  welcome.regions.reserve(std::min<size_t>(region_count, r.remaining() / kRegionFixedSize));
  uint64_t total_extents = 0;
  for (uint32_t i = 0; i < region_count; ++i) {
    absl::Status s = ReadRegion(r, i, &total_extents, &welcome.regions.emplace_back());
    if (!s.ok()) return s;
  }
  if (r.remaining() != 0) return TrailingBytes(kFrame, r.remaining());

  std::vector<absl::string_view> names;
  names.reserve(welcome.regions.size());
  for (const RegionInfo& region : welcome.regions) names.push_back(region.name);
  std::sort(names.begin(), names.end());
  if (auto dup = std::adjacent_find(names.begin(), names.end()); dup != names.end()) {
    return Malformed(kFrame, absl::StrCat("region name \"", absl::CHexEscape(*dup), "\" repeats"));
  }
  return welcome;
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

absl::StatusOr<ErrorReply> DecodeError(std::span<const uint8_t> body) {
  constexpr absl::string_view kFrame = "ERROR";
  Reader r(body);
  uint32_t code = 0;
  uint16_t message_len = 0;
  std::span<const uint8_t> message;
  if (!r.Read(&code) || !r.Read(&message_len)) return Truncated(kFrame);
  if (message_len > kMaxErrorMessage) {
    return Malformed(kFrame, absl::StrCat("message is ", message_len, " bytes"));
  }
  if (!r.ReadBytes(message_len, &message)) return Truncated(kFrame);
  if (r.remaining() != 0) return TrailingBytes(kFrame, r.remaining());
  if (FindErrorCode(static_cast<ErrorCode>(code)) == nullptr) {
    return Malformed(kFrame, absl::StrCat("unknown code ", code));
  }
  return ErrorReply{
      .code = static_cast<ErrorCode>(code),
      .message = std::string(reinterpret_cast<const char*>(message.data()), message.size())};
}

namespace {

// The authentication bodies are fixed-size byte strings.
absl::Status CheckFixedSize(absl::string_view frame, std::span<const uint8_t> body, size_t size) {
  if (body.size() < size) return Truncated(frame);
  if (body.size() > size) return TrailingBytes(frame, body.size() - size);
  return absl::OkStatus();
}

template <size_t N>
void CopyOut(std::span<const uint8_t> from, std::array<uint8_t, N>* to) {
  std::memcpy(to->data(), from.data(), N);
}

}  // namespace

absl::StatusOr<Challenge> DecodeChallenge(std::span<const uint8_t> body) {
  if (absl::Status s = CheckFixedSize("CHALLENGE", body, kChallengeBodySize); !s.ok()) return s;
  Challenge challenge;
  CopyOut(body, &challenge.server_nonce);
  return challenge;
}

absl::StatusOr<AuthRequest> DecodeAuth(std::span<const uint8_t> body) {
  if (absl::Status s = CheckFixedSize("AUTH", body, kAuthBodySize); !s.ok()) return s;
  AuthRequest auth;
  CopyOut(body.first(kNonceSize), &auth.client_nonce);
  CopyOut(body.subspan(kNonceSize), &auth.proof);
  return auth;
}

absl::StatusOr<AuthOk> DecodeAuthOk(std::span<const uint8_t> body) {
  if (absl::Status s = CheckFixedSize("AUTH_OK", body, kAuthOkBodySize); !s.ok()) return s;
  AuthOk ok;
  CopyOut(body, &ok.proof);
  return ok;
}

// --- Helpers -----------------------------------------------------------------

uint64_t PagesChecksum(std::span<const uint8_t> flags, std::span<const uint8_t> payload) {
  Checksum checksum;
  checksum.Update(flags);
  checksum.Update(payload);
  return checksum.Digest();
}

std::string_view ErrorCodeName(ErrorCode code) {
  const ErrorCodeInfo* info = FindErrorCode(code);
  return info != nullptr ? info->name : "UNKNOWN";
}

absl::Status ErrorToStatus(const ErrorReply& error) {
  const ErrorCodeInfo* info = FindErrorCode(error.code);
  const std::string_view name = ErrorCodeName(error.code);
  std::string message = absl::StrCat("page server: ", absl::string_view(name.data(), name.size()));
  if (!error.message.empty()) absl::StrAppend(&message, ": ", error.message);
  return absl::Status(info != nullptr ? info->status : absl::StatusCode::kUnknown, message);
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
