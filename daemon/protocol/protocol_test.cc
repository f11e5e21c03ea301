#include "daemon/protocol/protocol.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace lazyram::protocol {
namespace {

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// The first `n` bytes of `s` in a buffer of exactly that size, so that
// AddressSanitizer flags a decoder reading one byte too far.
std::vector<uint8_t> Prefix(const std::string& s, size_t n) {
  return std::vector<uint8_t>(s.begin(), s.begin() + n);
}

// Checks the header of a single encoded frame and returns its body.
std::string BodyOf(const std::string& frame, FrameType type, uint64_t tag = 0) {
  absl::StatusOr<FrameHeader> header = DecodeHeader(Bytes(frame), kMaxHandshakeBody);
  EXPECT_TRUE(header.ok()) << header.status();
  if (!header.ok()) return "";
  EXPECT_EQ(header->type, type);
  EXPECT_EQ(header->tag, tag);
  EXPECT_EQ(header->flags, 0);
  EXPECT_EQ(header->body_len, frame.size() - kHeaderSize);
  return frame.substr(kHeaderSize);
}

template <typename T>
void PutLE(std::string* s, size_t offset, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) (*s)[offset + i] = static_cast<char>(v >> (8 * i));
}

std::string HelloBody(const Hello& hello = {}) {
  std::string frame;
  AppendHello(hello, &frame);
  return BodyOf(frame, FrameType::kHello);
}

std::string WelcomeBody(const Welcome& welcome) {
  std::string frame;
  AppendWelcome(welcome, &frame);
  return BodyOf(frame, FrameType::kWelcome);
}

std::string ReadBody(const ReadRequest& request) {
  std::string frame;
  AppendRead(7, request, &frame);
  return BodyOf(frame, FrameType::kRead, 7);
}

std::string ErrorBody(const ErrorReply& error) {
  std::string frame;
  AppendError(9, error, &frame);
  return BodyOf(frame, FrameType::kError, 9);
}

// `pattern[i]` '0' makes page i all zero; anything else fills it with data.
std::vector<uint8_t> MakePages(const std::string& pattern) {
  std::vector<uint8_t> pages(pattern.size() * kPageSize, 0);
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '0') continue;
    for (size_t j = 0; j < kPageSize; ++j) pages[i * kPageSize + j] = static_cast<uint8_t>(i + j);
  }
  return pages;
}

std::string PagesBody(const std::string& pattern, uint64_t first_page = 10) {
  const std::vector<uint8_t> pages = MakePages(pattern);
  std::string frame;
  AppendPages(5, 2, first_page, pattern.size(), pages, &frame);
  return BodyOf(frame, FrameType::kPages, 5);
}

Welcome SampleWelcome() {
  Welcome welcome;
  welcome.regions.push_back({"pc.ram", 1ull << 30, {{0, 16}, {100, 1}, {101, 5}, {262000, 144}}});
  welcome.regions.push_back({"mem1", 3 * kPageSize + 1, {{3, 1}}});  // partial last page
  welcome.regions.push_back({"empty", 0, {}});
  welcome.regions.push_back({std::string(kMaxRegionName, 'n'), kPageSize, {}});
  return welcome;
}

// --- Header ------------------------------------------------------------------

TEST(HeaderTest, RoundTrip) {
  for (uint8_t type = 1; type <= 8; ++type) {
    const FrameHeader in{.body_len = 0xdeadbe,
                         .type = static_cast<FrameType>(type),
                         .flags = 3,
                         .tag = 0x0123456789abcdefULL};
    uint8_t bytes[kHeaderSize];
    EncodeHeader(in, bytes);
    absl::StatusOr<FrameHeader> out = DecodeHeader(bytes, 0xffffffff);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->body_len, in.body_len);
    EXPECT_EQ(out->type, in.type);
    EXPECT_EQ(out->flags, in.flags);
    EXPECT_EQ(out->tag, in.tag);
  }
}

TEST(HeaderTest, WireLayout) {
  uint8_t bytes[kHeaderSize];
  EncodeHeader(
      {.body_len = 0x04030201, .type = FrameType::kPages, .flags = 0, .tag = 0x0807060504030201ULL},
      bytes);
  const uint8_t want[kHeaderSize] = {1, 2, 3, 4, 4, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8};
  EXPECT_EQ(std::memcmp(bytes, want, kHeaderSize), 0);
}

TEST(HeaderTest, ShortHeaderIsInvalid) {
  uint8_t bytes[kHeaderSize];
  EncodeHeader({.body_len = 1, .type = FrameType::kRead, .tag = 1}, bytes);
  for (size_t n = 0; n < kHeaderSize; ++n) {
    EXPECT_TRUE(absl::IsInvalidArgument(DecodeHeader({bytes, n}, kMaxFrameBody).status())) << n;
  }
}

TEST(HeaderTest, UnknownTypeIsInvalid) {
  for (int type : {0, 9, 0x80, 0xff}) {
    uint8_t bytes[kHeaderSize];
    EncodeHeader({.body_len = 1, .type = FrameType::kRead}, bytes);
    bytes[4] = static_cast<uint8_t>(type);
    EXPECT_TRUE(absl::IsInvalidArgument(DecodeHeader(bytes, kMaxFrameBody).status())) << type;
  }
}

TEST(HeaderTest, ReservedBitsAreInvalid) {
  for (int byte : {6, 7}) {
    for (int bit = 0; bit < 8; ++bit) {
      uint8_t bytes[kHeaderSize];
      EncodeHeader({.body_len = 1, .type = FrameType::kRead}, bytes);
      bytes[byte] = static_cast<uint8_t>(1 << bit);
      EXPECT_TRUE(absl::IsInvalidArgument(DecodeHeader(bytes, kMaxFrameBody).status()));
    }
  }
}

TEST(HeaderTest, OversizeBodyIsResourceExhausted) {
  uint8_t bytes[kHeaderSize];
  EncodeHeader({.body_len = kMaxFrameBody, .type = FrameType::kPages}, bytes);
  EXPECT_TRUE(DecodeHeader(bytes, kMaxFrameBody).ok());
  EncodeHeader({.body_len = kMaxFrameBody + 1, .type = FrameType::kPages}, bytes);
  EXPECT_TRUE(absl::IsResourceExhausted(DecodeHeader(bytes, kMaxFrameBody).status()));
  EncodeHeader({.body_len = 0xffffffff, .type = FrameType::kWelcome}, bytes);
  EXPECT_TRUE(absl::IsResourceExhausted(DecodeHeader(bytes, kMaxHandshakeBody).status()));
}

TEST(HeaderTest, IgnoresBytesPastTheHeader) {
  std::string frame;
  AppendRead(42, {.region = 1, .count = 1}, &frame);
  frame += "garbage";
  absl::StatusOr<FrameHeader> header = DecodeHeader(Bytes(frame), kMaxFrameBody);
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->body_len, 24u);
  EXPECT_EQ(header->tag, 42u);
}

// --- HELLO -------------------------------------------------------------------

TEST(HelloTest, RoundTrip) {
  for (uint32_t features : {0u, 1u, 0x80000001u}) {
    absl::StatusOr<Hello> hello = DecodeHello(Bytes(HelloBody({.features = features})));
    ASSERT_TRUE(hello.ok()) << hello.status();
    EXPECT_EQ(hello->version, kVersion);
    EXPECT_EQ(hello->features, features);
  }
}

TEST(HelloTest, WireLayout) {
  const std::string body = HelloBody({.features = 0x11223344});
  const std::string want("LAZYRAM1\x01\x00\x00\x00\x44\x33\x22\x11", 16);
  EXPECT_EQ(body, want);
}

TEST(HelloTest, EveryTruncationIsInvalid) {
  const std::string body = HelloBody();
  for (size_t n = 0; n < body.size(); ++n) {
    EXPECT_TRUE(absl::IsInvalidArgument(DecodeHello(Prefix(body, n)).status())) << n;
  }
}

TEST(HelloTest, TrailingBytesAreInvalid) {
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeHello(Bytes(HelloBody() + '\0')).status()));
}

TEST(HelloTest, BadMagicIsInvalid) {
  for (size_t i = 0; i < 8; ++i) {
    std::string body = HelloBody();
    body[i] ^= 0x20;
    EXPECT_TRUE(absl::IsInvalidArgument(DecodeHello(Bytes(body)).status())) << i;
  }
}

TEST(HelloTest, OtherVersionIsFailedPrecondition) {
  for (uint16_t version : {0, 2, 0xffff}) {
    std::string body = HelloBody();
    PutLE<uint16_t>(&body, 8, version);
    EXPECT_TRUE(absl::IsFailedPrecondition(DecodeHello(Bytes(body)).status())) << version;
  }
}

TEST(HelloTest, FutureVersionWithLongerBodyIsFailedPrecondition) {
  // Magic and version come first in every version, so a newer client still
  // gets a version error rather than "malformed".
  std::string body = HelloBody({.version = 2}) + std::string(32, 'x');
  EXPECT_TRUE(absl::IsFailedPrecondition(DecodeHello(Bytes(body)).status()));
}

TEST(HelloTest, ReservedBitsAreInvalid) {
  std::string body = HelloBody();
  body[11] = 1;
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeHello(Bytes(body)).status()));
}

// --- WELCOME -----------------------------------------------------------------

void ExpectWelcomeRoundTrip(const Welcome& in) {
  absl::StatusOr<Welcome> out = DecodeWelcome(Bytes(WelcomeBody(in)));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->version, in.version);
  EXPECT_EQ(out->features, in.features);
  EXPECT_EQ(out->page_size, in.page_size);
  ASSERT_EQ(out->regions.size(), in.regions.size());
  for (size_t i = 0; i < in.regions.size(); ++i) {
    EXPECT_EQ(out->regions[i].name, in.regions[i].name);
    EXPECT_EQ(out->regions[i].size, in.regions[i].size);
    EXPECT_EQ(out->regions[i].zero_extents, in.regions[i].zero_extents);
  }
}

TEST(WelcomeTest, RoundTrip) {
  ExpectWelcomeRoundTrip(SampleWelcome());
  ExpectWelcomeRoundTrip(Welcome{});
  Welcome features = SampleWelcome();
  features.features = 0xabcd;
  ExpectWelcomeRoundTrip(features);
}

TEST(WelcomeTest, PartialLastPageCounts) {
  absl::StatusOr<Welcome> out = DecodeWelcome(Bytes(WelcomeBody(SampleWelcome())));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->regions[1].page_count(), 4u);
  EXPECT_EQ(out->regions[2].page_count(), 0u);
}

TEST(WelcomeTest, WireLayout) {
  Welcome welcome;
  welcome.features = 0x01020304;
  welcome.regions.push_back({"ab", 0x1001, {{1, 1}}});
  const std::string want(
      "LAZYRAM1"
      "\x01\x00\x00\x00"
      "\x04\x03\x02\x01"
      "\x00\x10\x00\x00"
      "\x01\x00\x00\x00"
      "\x02\x00"
      "ab"
      "\x01\x10\x00\x00\x00\x00\x00\x00"
      "\x01\x00\x00\x00"
      "\x01\x00\x00\x00\x00\x00\x00\x00"
      "\x01\x00\x00\x00\x00\x00\x00\x00",
      56);
  EXPECT_EQ(WelcomeBody(welcome), want);
}

TEST(WelcomeTest, EveryTruncationIsInvalid) {
  const std::string body = WelcomeBody(SampleWelcome());
  for (size_t n = 0; n < body.size(); ++n) {
    ASSERT_TRUE(absl::IsInvalidArgument(DecodeWelcome(Prefix(body, n)).status())) << n;
  }
}

TEST(WelcomeTest, TrailingBytesAreInvalid) {
  const std::string body = WelcomeBody(SampleWelcome()) + '\0';
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeWelcome(Bytes(body)).status()));
}

TEST(WelcomeTest, BadMagicIsInvalid) {
  std::string body = WelcomeBody(SampleWelcome());
  body[0] = 'l';
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeWelcome(Bytes(body)).status()));
}

TEST(WelcomeTest, OtherVersionIsFailedPrecondition) {
  Welcome welcome = SampleWelcome();
  welcome.version = 2;
  EXPECT_TRUE(absl::IsFailedPrecondition(DecodeWelcome(Bytes(WelcomeBody(welcome))).status()));
}

TEST(WelcomeTest, OtherPageSizeIsFailedPrecondition) {
  for (uint32_t page_size : {0u, 512u, 8192u, 2u << 20}) {
    Welcome welcome = SampleWelcome();
    welcome.page_size = page_size;
    EXPECT_TRUE(absl::IsFailedPrecondition(DecodeWelcome(Bytes(WelcomeBody(welcome))).status()));
  }
}

TEST(WelcomeTest, ReservedBitsAreInvalid) {
  std::string body = WelcomeBody(SampleWelcome());
  body[10] = 1;
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeWelcome(Bytes(body)).status()));
}

TEST(WelcomeTest, RegionCountLimit) {
  Welcome welcome;
  for (uint32_t i = 0; i < kMaxRegions; ++i) {
    welcome.regions.push_back({"r" + std::to_string(i), kPageSize, {}});
  }
  EXPECT_TRUE(DecodeWelcome(Bytes(WelcomeBody(welcome))).ok());
  welcome.regions.push_back({"one-too-many", kPageSize, {}});
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeWelcome(Bytes(WelcomeBody(welcome))).status()));
}

TEST(WelcomeTest, HugeRegionCountWithShortBodyIsInvalid) {
  std::string body = WelcomeBody(Welcome{});
  PutLE<uint32_t>(&body, 20, kMaxRegions);
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeWelcome(Bytes(body)).status()));
  PutLE<uint32_t>(&body, 20, 0xffffffff);
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeWelcome(Bytes(body)).status()));
}

TEST(WelcomeTest, BadNamesAreInvalid) {
  const std::string bad[] = {"",
                             ".",
                             "..",
                             "a/b",
                             "/",
                             std::string("a\0b", 3),
                             std::string(1, '\0'),
                             std::string(kMaxRegionName + 1, 'x')};
  for (const std::string& name : bad) {
    Welcome welcome = SampleWelcome();
    welcome.regions[1].name = name;
    EXPECT_TRUE(absl::IsInvalidArgument(DecodeWelcome(Bytes(WelcomeBody(welcome))).status()))
        << name;
  }
}

TEST(WelcomeTest, OddButLegalNamesAreAccepted) {
  for (const std::string name : {"...", ".a", "a.", " ", "\xff\xfe", "pc.ram"}) {
    Welcome welcome;
    welcome.regions.push_back({name, kPageSize, {}});
    EXPECT_TRUE(DecodeWelcome(Bytes(WelcomeBody(welcome))).ok()) << name;
  }
}

TEST(WelcomeTest, DuplicateNamesAreInvalid) {
  Welcome welcome = SampleWelcome();
  welcome.regions.push_back({"mem1", kPageSize, {}});
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeWelcome(Bytes(WelcomeBody(welcome))).status()));
}

TEST(WelcomeTest, RegionSizeMustFitOffT) {
  Welcome welcome;
  welcome.regions.push_back({"big", uint64_t{std::numeric_limits<int64_t>::max()}, {}});
  EXPECT_TRUE(DecodeWelcome(Bytes(WelcomeBody(welcome))).ok());
  for (uint64_t size : {uint64_t{1} << 63, ~uint64_t{0}}) {
    welcome.regions[0].size = size;
    EXPECT_TRUE(absl::IsInvalidArgument(DecodeWelcome(Bytes(WelcomeBody(welcome))).status()));
  }
}

TEST(WelcomeTest, BadExtentsAreInvalid) {
  // Region of 10 pages (the last one partial).
  const uint64_t size = 9 * kPageSize + 100;
  const std::vector<std::vector<ZeroExtent>> bad = {
      {{0, 0}},                 // empty
      {{5, 1}, {2, 1}},         // unsorted
      {{2, 3}, {4, 1}},         // overlapping
      {{2, 3}, {2, 3}},         // repeated
      {{9, 2}},                 // past the end
      {{10, 1}},                // starts at the end
      {{11, 0}},                // empty and past the end
      {{~uint64_t{0}, 1}},      // far past the end
      {{1, ~uint64_t{0}}},      // first + count overflows
      {{~uint64_t{0} - 1, 2}},  // first + count wraps to 0
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    Welcome welcome = SampleWelcome();
    welcome.regions[1] = {"r", size, bad[i]};
    EXPECT_TRUE(absl::IsInvalidArgument(DecodeWelcome(Bytes(WelcomeBody(welcome))).status()))
        << "case " << i;
  }
}

TEST(WelcomeTest, EdgeExtentsAreAccepted) {
  const uint64_t size = 9 * kPageSize + 100;
  const std::vector<std::vector<ZeroExtent>> good = {
      {{0, 10}},                 // whole region, including the partial page
      {{0, 1}, {1, 1}, {9, 1}},  // adjacent, and the last page
  };
  for (const std::vector<ZeroExtent>& extents : good) {
    Welcome welcome;
    welcome.regions.push_back({"r", size, extents});
    ExpectWelcomeRoundTrip(welcome);
  }
}

TEST(WelcomeTest, ExtentOnEmptyRegionIsInvalid) {
  Welcome welcome;
  welcome.regions.push_back({"r", 0, {{0, 1}}});
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeWelcome(Bytes(WelcomeBody(welcome))).status()));
}

TEST(WelcomeTest, TotalExtentLimitSpansRegions) {
  Welcome welcome;
  for (int r = 0; r < 2; ++r) {
    RegionInfo region{"r" + std::to_string(r), uint64_t{2} * kMaxZeroExtents * kPageSize, {}};
    for (uint64_t i = 0; i < kMaxZeroExtents / 2; ++i) region.zero_extents.push_back({2 * i, 1});
    welcome.regions.push_back(std::move(region));
  }
  const std::string at_limit = WelcomeBody(welcome);
  ASSERT_LE(at_limit.size(), kMaxHandshakeBody);
  EXPECT_TRUE(DecodeWelcome(Bytes(at_limit)).ok());
  welcome.regions[1].zero_extents.push_back({kMaxZeroExtents + 1, 1});
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeWelcome(Bytes(WelcomeBody(welcome))).status()));
}

TEST(WelcomeTest, HugeExtentCountWithShortBodyIsInvalid) {
  Welcome welcome;
  welcome.regions.push_back({"r", kPageSize, {}});
  std::string body = WelcomeBody(welcome);
  PutLE<uint32_t>(&body, body.size() - 4, kMaxZeroExtents);
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeWelcome(Bytes(body)).status()));
}

// --- READ --------------------------------------------------------------------

TEST(ReadTest, RoundTrip) {
  const ReadRequest requests[] = {
      {.region = 0, .count = 1, .first_page = 0, .priority = Priority::kDemand},
      {.region = 7,
       .count = kMaxPagesPerRequest,
       .first_page = 123456789,
       .priority = Priority::kBulk},
      {.region = 0xffffffff, .count = 1, .first_page = ~uint64_t{0} - 1},
      {.region = 1, .count = 2, .first_page = ~uint64_t{0} - 2},
  };
  for (const ReadRequest& in : requests) {
    absl::StatusOr<ReadRequest> out = DecodeRead(Bytes(ReadBody(in)));
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->region, in.region);
    EXPECT_EQ(out->count, in.count);
    EXPECT_EQ(out->first_page, in.first_page);
    EXPECT_EQ(out->priority, in.priority);
  }
}

TEST(ReadTest, WireLayout) {
  const std::string body =
      ReadBody({.region = 3, .count = 2, .first_page = 0x0102, .priority = Priority::kBulk});
  const std::string want(
      "\x03\x00\x00\x00"
      "\x02\x00\x00\x00"
      "\x02\x01\x00\x00\x00\x00\x00\x00"
      "\x01"
      "\x00\x00\x00\x00\x00\x00\x00",
      24);
  EXPECT_EQ(body, want);
}

TEST(ReadTest, EveryTruncationIsInvalid) {
  const std::string body = ReadBody({.region = 1, .count = 1});
  for (size_t n = 0; n < body.size(); ++n) {
    EXPECT_TRUE(absl::IsInvalidArgument(DecodeRead(Prefix(body, n)).status())) << n;
  }
}

TEST(ReadTest, TrailingBytesAreInvalid) {
  const std::string body = ReadBody({.region = 1, .count = 1}) + '\0';
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeRead(Bytes(body)).status()));
}

TEST(ReadTest, BadCountIsOutOfRange) {
  for (uint32_t count : {0u, kMaxPagesPerRequest + 1, 0xffffffffu}) {
    const std::string body = ReadBody({.region = 1, .count = count});
    EXPECT_TRUE(absl::IsOutOfRange(DecodeRead(Bytes(body)).status())) << count;
  }
}

TEST(ReadTest, OverflowingRangeIsOutOfRange) {
  const std::string body = ReadBody({.count = 2, .first_page = ~uint64_t{0} - 1});
  EXPECT_TRUE(absl::IsOutOfRange(DecodeRead(Bytes(body)).status()));
}

TEST(ReadTest, UnknownPriorityIsInvalid) {
  for (int priority : {2, 0x80, 0xff}) {
    std::string body = ReadBody({.count = 1});
    body[16] = static_cast<char>(priority);
    EXPECT_TRUE(absl::IsInvalidArgument(DecodeRead(Bytes(body)).status())) << priority;
  }
}

TEST(ReadTest, ReservedBytesAreInvalid) {
  for (size_t i = 17; i < 24; ++i) {
    std::string body = ReadBody({.count = 1});
    body[i] = 1;
    EXPECT_TRUE(absl::IsInvalidArgument(DecodeRead(Bytes(body)).status())) << i;
  }
}

// --- PAGES -------------------------------------------------------------------

TEST(PagesTest, RoundTripMixedPages) {
  // The caller zero-pads a short last page; a mostly-zero page is still data.
  std::vector<uint8_t> pages = MakePages("10d0x0");
  std::memset(pages.data() + 5 * kPageSize, 0, kPageSize);
  std::memset(pages.data() + 5 * kPageSize, 0xaa, 100);
  pages[3 * kPageSize + kPageSize - 1] = 1;
  std::string frame;
  AppendPages(77, 4, 1000, 6, pages, &frame);
  const std::string body = BodyOf(frame, FrameType::kPages, 77);
  absl::StatusOr<PagesView> view = DecodePages(Bytes(body));
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->region, 4u);
  EXPECT_EQ(view->count, 6u);
  EXPECT_EQ(view->first_page, 1000u);
  const std::vector<uint8_t> flags(view->flags.begin(), view->flags.end());
  EXPECT_EQ(flags, (std::vector<uint8_t>{0, 1, 0, 0, 0, 0}));
  ASSERT_EQ(view->payload.size(), 5 * kPageSize);
  EXPECT_EQ(std::memcmp(view->payload.data(), pages.data(), kPageSize), 0);
  EXPECT_EQ(
      std::memcmp(view->payload.data() + kPageSize, pages.data() + 2 * kPageSize, 4 * kPageSize),
      0);
  // The view points into the body, not into a copy.
  EXPECT_EQ(view->flags.data(), reinterpret_cast<const uint8_t*>(body.data()) + 24);
  EXPECT_EQ(body.size(), 24 + 6 + 5 * kPageSize);
}

TEST(PagesTest, AllZeroPagesCarryNoPayload) {
  const std::string body = PagesBody(std::string(kMaxPagesPerRequest, '0'));
  EXPECT_EQ(body.size(), 24 + kMaxPagesPerRequest);
  absl::StatusOr<PagesView> view = DecodePages(Bytes(body));
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_TRUE(view->payload.empty());
}

TEST(PagesTest, FullSizeFrameFitsTheLimit) {
  std::string frame;
  const std::vector<uint8_t> pages = MakePages(std::string(kMaxPagesPerRequest, 'd'));
  AppendPages(1, 0, 0, kMaxPagesPerRequest, pages, &frame);
  ASSERT_TRUE(DecodeHeader(Bytes(frame), kMaxFrameBody).ok());
  absl::StatusOr<PagesView> view = DecodePages(Bytes(frame).subspan(kHeaderSize));
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(std::memcmp(view->payload.data(), pages.data(), pages.size()), 0);
}

TEST(PagesTest, AppendsAfterExistingBytes) {
  std::string out = "prefix";
  const std::vector<uint8_t> pages = MakePages("d0");
  AppendPages(1, 0, 0, 2, pages, &out);
  ASSERT_EQ(out.substr(0, 6), "prefix");
  const std::string frame = out.substr(6);
  EXPECT_TRUE(DecodePages(Bytes(BodyOf(frame, FrameType::kPages, 1))).ok());
}

TEST(PagesTest, ChecksumIsXxh3OfFlagsThenPayload) {
  const std::string body = PagesBody("d0d");
  absl::StatusOr<PagesView> view = DecodePages(Bytes(body));
  ASSERT_TRUE(view.ok()) << view.status();
  const std::string flags_and_payload = body.substr(24);
  EXPECT_EQ(view->checksum, XXH3_64bits(flags_and_payload.data(), flags_and_payload.size()));
  EXPECT_EQ(PagesChecksum({}, {}), 0x2D06800538D394C2ULL);  // XXH3-64 of nothing
}

TEST(PagesTest, EveryTruncationIsInvalid) {
  const std::string body = PagesBody("d0d");
  for (size_t n = 0; n < body.size(); ++n) {
    ASSERT_TRUE(absl::IsInvalidArgument(DecodePages(Prefix(body, n)).status())) << n;
  }
}

TEST(PagesTest, TrailingBytesAreInvalid) {
  for (const char* pattern : {"0", "d", "d0d"}) {
    const std::string body = PagesBody(pattern) + '\0';
    EXPECT_TRUE(absl::IsInvalidArgument(DecodePages(Bytes(body)).status())) << pattern;
  }
}

TEST(PagesTest, WrongPayloadLengthIsInvalid) {
  const std::string body = PagesBody("d0d");
  // One page short, one page extra, a byte short.
  for (const std::string& bad :
       {body.substr(0, body.size() - kPageSize), body + std::string(kPageSize, 'x'),
        body.substr(0, body.size() - 1)}) {
    EXPECT_TRUE(absl::IsInvalidArgument(DecodePages(Bytes(bad)).status()));
  }
  // A flag flipped to "zero" leaves a page too many in the payload.
  std::string flipped = body;
  flipped[24] = static_cast<char>(PageFlag::kZero);
  EXPECT_TRUE(absl::IsInvalidArgument(DecodePages(Bytes(flipped)).status()));
}

TEST(PagesTest, UnknownFlagIsInvalid) {
  for (int flag : {2, 0x80, 0xff}) {
    std::string body = PagesBody("000");
    body[25] = static_cast<char>(flag);
    EXPECT_TRUE(absl::IsInvalidArgument(DecodePages(Bytes(body)).status())) << flag;
  }
}

TEST(PagesTest, BadCountIsInvalid) {
  for (uint32_t count : {0u, kMaxPagesPerRequest + 1, 0xffffffffu}) {
    std::string body = PagesBody("0");
    PutLE<uint32_t>(&body, 4, count);
    EXPECT_TRUE(absl::IsInvalidArgument(DecodePages(Bytes(body)).status())) << count;
  }
}

TEST(PagesTest, OverflowingRangeIsInvalid) {
  EXPECT_TRUE(DecodePages(Bytes(PagesBody("00", ~uint64_t{0} - 2))).ok());
  const std::string body = PagesBody("00", ~uint64_t{0} - 1);
  EXPECT_TRUE(absl::IsInvalidArgument(DecodePages(Bytes(body)).status()));
}

TEST(PagesTest, CorruptionIsDataLoss) {
  const std::string body = PagesBody("d0d");
  // Bits spread over both payload pages, then every checksum byte.
  for (size_t byte = 24 + 3; byte < body.size(); byte += 997) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string bad = body;
      bad[byte] ^= static_cast<char>(1 << bit);
      EXPECT_TRUE(absl::IsDataLoss(DecodePages(Bytes(bad)).status())) << byte << ":" << bit;
    }
  }
  for (size_t byte = 16; byte < 24; ++byte) {
    std::string bad = body;
    bad[byte] ^= 0x01;
    EXPECT_TRUE(absl::IsDataLoss(DecodePages(Bytes(bad)).status())) << byte;
  }
  std::string last = body;
  last.back() ^= static_cast<char>(0x80);
  EXPECT_TRUE(absl::IsDataLoss(DecodePages(Bytes(last)).status()));
}

TEST(PagesTest, SwappedFlagsAreDataLoss) {
  // Same payload length, pages moved: only the checksum over the flags can
  // tell.
  std::string body = PagesBody("d0");
  std::swap(body[24], body[25]);
  EXPECT_TRUE(absl::IsDataLoss(DecodePages(Bytes(body)).status()));
}

// --- ERROR -------------------------------------------------------------------

TEST(ErrorTest, RoundTripEveryCode) {
  for (uint32_t code = 1; code <= 8; ++code) {
    const ErrorReply in{.code = static_cast<ErrorCode>(code), .message = "region 3 is gone"};
    absl::StatusOr<ErrorReply> out = DecodeError(Bytes(ErrorBody(in)));
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->code, in.code);
    EXPECT_EQ(out->message, in.message);
  }
}

TEST(ErrorTest, EmptyMessage) {
  absl::StatusOr<ErrorReply> out =
      DecodeError(Bytes(ErrorBody({.code = ErrorCode::kBusy, .message = ""})));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->message, "");
}

TEST(ErrorTest, WireLayout) {
  const std::string body = ErrorBody({.code = ErrorCode::kNoSuchRegion, .message = "no"});
  EXPECT_EQ(body, std::string("\x03\x00\x00\x00\x02\x00no", 8));
}

TEST(ErrorTest, LongMessageIsTruncated) {
  std::string message(kMaxErrorMessage, 'a');
  message += "tail that does not fit";
  absl::StatusOr<ErrorReply> out =
      DecodeError(Bytes(ErrorBody({.code = ErrorCode::kIoError, .message = message})));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->message, std::string(kMaxErrorMessage, 'a'));
}

TEST(ErrorTest, OverlongMessageIsInvalid) {
  std::string body = ErrorBody({.code = ErrorCode::kIoError, .message = ""});
  PutLE<uint16_t>(&body, 4, kMaxErrorMessage + 1);
  body += std::string(kMaxErrorMessage + 1, 'm');
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeError(Bytes(body)).status()));
}

TEST(ErrorTest, EveryTruncationIsInvalid) {
  const std::string body = ErrorBody({.code = ErrorCode::kBusy, .message = "slow down"});
  for (size_t n = 0; n < body.size(); ++n) {
    EXPECT_TRUE(absl::IsInvalidArgument(DecodeError(Prefix(body, n)).status())) << n;
  }
}

TEST(ErrorTest, TrailingBytesAreInvalid) {
  const std::string body = ErrorBody({.code = ErrorCode::kBusy, .message = "x"}) + 'y';
  EXPECT_TRUE(absl::IsInvalidArgument(DecodeError(Bytes(body)).status()));
}

TEST(ErrorTest, UnknownCodeIsInvalid) {
  for (uint32_t code : {0u, 9u, 0xffffffffu}) {
    std::string body = ErrorBody({.code = ErrorCode::kBusy, .message = ""});
    PutLE<uint32_t>(&body, 0, code);
    EXPECT_TRUE(absl::IsInvalidArgument(DecodeError(Bytes(body)).status())) << code;
  }
}

TEST(ErrorTest, ToStatus) {
  const struct {
    ErrorCode code;
    absl::StatusCode status;
  } cases[] = {
      {ErrorCode::kBadRequest, absl::StatusCode::kInvalidArgument},
      {ErrorCode::kBadVersion, absl::StatusCode::kFailedPrecondition},
      {ErrorCode::kNoSuchRegion, absl::StatusCode::kNotFound},
      {ErrorCode::kOutOfRange, absl::StatusCode::kOutOfRange},
      {ErrorCode::kIoError, absl::StatusCode::kInternal},
      {ErrorCode::kBusy, absl::StatusCode::kResourceExhausted},
      {ErrorCode::kAuthRequired, absl::StatusCode::kUnauthenticated},
      {ErrorCode::kAuthFailed, absl::StatusCode::kUnauthenticated},
  };
  for (const auto& c : cases) {
    const absl::Status status = ErrorToStatus({.code = c.code, .message = "why"});
    EXPECT_EQ(status.code(), c.status) << ErrorCodeName(c.code);
    EXPECT_EQ(status.message(),
              absl::StrCat("page server: ", std::string(ErrorCodeName(c.code)), ": why"));
  }
  EXPECT_EQ(ErrorToStatus({.code = ErrorCode::kBusy, .message = ""}).message(),
            "page server: BUSY");
  EXPECT_EQ(ErrorToStatus({.code = static_cast<ErrorCode>(99), .message = ""}).code(),
            absl::StatusCode::kUnknown);
  EXPECT_EQ(ErrorCodeName(static_cast<ErrorCode>(99)), "UNKNOWN");
}

// --- Authentication: CHALLENGE, AUTH, AUTH_OK ---------------------------------

Nonce Filled(uint8_t first) {
  Nonce n;
  for (size_t i = 0; i < n.size(); ++i) n[i] = static_cast<uint8_t>(first + i);
  return n;
}

std::string ChallengeBody(const Challenge& challenge) {
  std::string frame;
  AppendChallenge(challenge, &frame);
  return BodyOf(frame, FrameType::kChallenge);
}

std::string AuthBody(const AuthRequest& auth) {
  std::string frame;
  AppendAuth(auth, &frame);
  return BodyOf(frame, FrameType::kAuth);
}

std::string AuthOkBody(const AuthOk& ok) {
  std::string frame;
  AppendAuthOk(ok, &frame);
  return BodyOf(frame, FrameType::kAuthOk);
}

TEST(AuthFramesTest, RoundTrip) {
  const Challenge challenge{Filled(1)};
  absl::StatusOr<Challenge> c = DecodeChallenge(Bytes(ChallengeBody(challenge)));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->server_nonce, challenge.server_nonce);

  const AuthRequest auth{Filled(40), Filled(90)};
  absl::StatusOr<AuthRequest> a = DecodeAuth(Bytes(AuthBody(auth)));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->client_nonce, auth.client_nonce);
  EXPECT_EQ(a->proof, auth.proof);

  const AuthOk ok{Filled(200)};
  absl::StatusOr<AuthOk> o = DecodeAuthOk(Bytes(AuthOkBody(ok)));
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->proof, ok.proof);
}

TEST(AuthFramesTest, WireLayout) {
  const std::string auth = AuthBody({Filled(0), Filled(100)});
  ASSERT_EQ(auth.size(), kNonceSize + kProofSize);
  EXPECT_EQ(static_cast<uint8_t>(auth[0]), 0);             // client nonce first
  EXPECT_EQ(static_cast<uint8_t>(auth[kNonceSize]), 100);  // then the proof
  EXPECT_EQ(ChallengeBody({Filled(7)}).size(), kNonceSize);
  EXPECT_EQ(AuthOkBody({Filled(7)}).size(), kProofSize);
  // The feature bit the client sets to authenticate.
  EXPECT_EQ(HelloBody({.features = kFeatureAuth}).substr(12), std::string("\x01\0\0\0", 4));
}

TEST(AuthFramesTest, EveryWrongLengthIsInvalid) {
  const std::string bodies[] = {ChallengeBody({Filled(1)}), AuthBody({Filled(1), Filled(2)}),
                                AuthOkBody({Filled(3)})};
  for (int which = 0; which < 3; ++which) {
    const std::string& body = bodies[which];
    auto decode = [which](std::span<const uint8_t> b) {
      switch (which) {
        case 0:
          return DecodeChallenge(b).status();
        case 1:
          return DecodeAuth(b).status();
        default:
          return DecodeAuthOk(b).status();
      }
    };
    for (size_t n = 0; n < body.size(); ++n) {
      EXPECT_TRUE(absl::IsInvalidArgument(decode(Prefix(body, n)))) << which << " " << n;
    }
    EXPECT_TRUE(absl::IsInvalidArgument(decode(Bytes(body + 'x')))) << which;
    EXPECT_TRUE(decode(Prefix(body, body.size())).ok()) << which;
  }
}

// --- IsZeroPage --------------------------------------------------------------

TEST(IsZeroPageTest, FindsAnyNonZeroByte) {
  std::vector<uint8_t> page(kPageSize, 0);
  EXPECT_TRUE(IsZeroPage(page));
  for (size_t i = 0; i < kPageSize; ++i) {
    page[i] = 0x01;
    ASSERT_FALSE(IsZeroPage(page)) << i;
    page[i] = 0;
  }
}

TEST(IsZeroPageTest, AnyLength) {
  EXPECT_TRUE(IsZeroPage({}));
  for (size_t n : {size_t{1}, size_t{7}, size_t{kPageSize + 1}, size_t{3 * kPageSize + 5}}) {
    std::vector<uint8_t> bytes(n, 0);
    EXPECT_TRUE(IsZeroPage(bytes)) << n;
    bytes.back() = 0x80;
    EXPECT_FALSE(IsZeroPage(bytes)) << n;
  }
}

// --- Robustness --------------------------------------------------------------

void DecodeEverything(std::span<const uint8_t> bytes) {
  (void)DecodeHeader(bytes, kMaxFrameBody).ok();
  (void)DecodeHello(bytes).ok();
  (void)DecodeWelcome(bytes).ok();
  (void)DecodeRead(bytes).ok();
  (void)DecodeError(bytes).ok();
  (void)DecodeChallenge(bytes).ok();
  (void)DecodeAuth(bytes).ok();
  (void)DecodeAuthOk(bytes).ok();
  absl::StatusOr<PagesView> pages = DecodePages(bytes);
  if (pages.ok()) {
    // A random PAGES body can only pass with a matching checksum; if one
    // does, its views must lie inside the input.
    ASSERT_GE(pages->flags.data(), bytes.data());
    ASSERT_LE(pages->payload.data() + pages->payload.size(), bytes.data() + bytes.size());
  }
}

TEST(RobustnessTest, RandomBytesNeverCrash) {
  std::mt19937_64 rng(20240601);
  for (int iter = 0; iter < 5000; ++iter) {
    const size_t len = iter % 10 == 0 ? rng() % 9000 : rng() % 80;
    std::vector<uint8_t> bytes(len);  // fresh, so ASan sees its exact end
    for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
    DecodeEverything(bytes);
  }
}

TEST(RobustnessTest, MutatedFramesNeverCrash) {
  // Random bytes rarely get past the first field; mutating valid bodies
  // reaches the deeper checks.
  const std::string seeds[] = {HelloBody(), WelcomeBody(SampleWelcome()),
                               ReadBody({.region = 1, .count = 3}), PagesBody("d0"),
                               ErrorBody({.code = ErrorCode::kBusy, .message = "busy"})};
  std::mt19937_64 rng(7);
  for (int iter = 0; iter < 5000; ++iter) {
    std::string body = seeds[iter % std::size(seeds)];
    const int mutations = 1 + static_cast<int>(rng() % 4);
    for (int m = 0; m < mutations; ++m) {
      switch (rng() % 3) {
        case 0:
          if (!body.empty()) body[rng() % body.size()] = static_cast<char>(rng());
          break;
        case 1:
          body.resize(rng() % (body.size() + 1));
          break;
        case 2:
          body.insert(rng() % (body.size() + 1), 1, static_cast<char>(rng()));
          break;
      }
    }
    DecodeEverything(Prefix(body, body.size()));
  }
}

}  // namespace
}  // namespace lazyram::protocol

namespace lazyram::protocol {
namespace {

TEST(SealPagesTest, MatchesAppendPagesForMixedPages) {
  for (uint32_t count : {1u, 3u, 17u, kMaxPagesPerRequest}) {
    std::vector<uint8_t> pages(size_t{count} * kPageSize, 0);
    for (uint32_t i = 0; i < count; ++i) {
      if (i % 3 == 1) continue;  // every third page stays zero
      for (size_t b = 0; b < kPageSize; b += 97) pages[i * kPageSize + b] = uint8_t(i + b);
    }
    std::string expected;
    AppendPages(7, 2, 1000, count, pages, &expected);
    std::vector<uint8_t> frame(PagesFrameCapacity(count));
    std::copy(pages.begin(), pages.end(), frame.begin() + PagesPayloadOffset(count));
    const size_t len = SealPages(7, 2, 1000, count, frame);
    ASSERT_EQ(len, expected.size()) << count;
    EXPECT_EQ(0, std::memcmp(frame.data(), expected.data(), len)) << count;
  }
}

}  // namespace
}  // namespace lazyram::protocol
