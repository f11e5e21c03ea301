// The handshake frames: HELLO and WELCOME (with the validation of the
// region table a client is about to mount), and the authentication frames
// CHALLENGE, AUTH and AUTH_OK. Declared in protocol.h.
#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "daemon/protocol/protocol.h"
#include "daemon/protocol/region_name.h"
#include "daemon/protocol/wire.h"

namespace lazyram::protocol {

using wire::AppendHeader;
using wire::Malformed;
using wire::Put;
using wire::PutBytes;
using wire::Reader;
using wire::TrailingBytes;
using wire::Truncated;

namespace {

constexpr size_t kHelloBodySize = 16;
constexpr size_t kWelcomeFixedSize = 24;  // magic .. region_count
constexpr size_t kRegionFixedSize = 14;   // name_len + size + zero_extent_count
constexpr size_t kZeroExtentSize = 16;
constexpr size_t kChallengeBodySize = kNonceSize;
constexpr size_t kAuthBodySize = kNonceSize + kProofSize;
constexpr size_t kAuthOkBodySize = kProofSize;
// Region sizes are file sizes (off_t); this also keeps page_count() from
// overflowing.
constexpr uint64_t kMaxRegionSize = std::numeric_limits<int64_t>::max();

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

}  // namespace lazyram::protocol
