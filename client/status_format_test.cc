#include "client/status_format.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_split.h"

namespace lazyram::client {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

TEST(ParseByteSizeTest, AcceptsDecimalHexAndSuffixes) {
  const std::pair<const char*, uint64_t> kCases[] = {
      {"0", 0},
      {"4096", 4096},
      {"0x1000", 4096},
      {"0XfF", 255},
      {"4096B", 4096},
      {"1K", 1024},
      {"1k", 1024},
      {"1KiB", 1024},
      {"1kb", 1024},
      {"2M", 2 << 20},
      {"2MiB", 2 << 20},
      {"3G", 3 * kGiB},
      {"3GB", 3 * kGiB},
      {"1T", uint64_t{1} << 40},
      {"1tib", uint64_t{1} << 40},
      {"18446744073709551615", kMax},
      {"0xffffffffffffffff", kMax},
      {"16777215T", kMax - ((uint64_t{1} << 40) - 1)},
  };
  for (const auto& [text, want] : kCases) {
    absl::StatusOr<uint64_t> got = ParseByteSize(text);
    ASSERT_TRUE(got.ok()) << text << ": " << got.status();
    EXPECT_EQ(*got, want) << text;
  }
}

TEST(ParseByteSizeTest, RejectsGarbage) {
  for (const char* text : {"", "abc", "1.5G", " 1", "1 ", "+1", "0x", "0x1K", "0xg", "1KX", "1Ki",
                           "1iB", "K", "1P", "1e6", "12 K"}) {
    absl::StatusOr<uint64_t> got = ParseByteSize(text);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << '"' << text << '"';
  }
  EXPECT_THAT(std::string(ParseByteSize("1Q").status().message()),
              HasSubstr("invalid byte size \"1Q\": expected"));
}

TEST(ParseByteSizeTest, RejectsNegative) {
  absl::Status status = ParseByteSize("-4096").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("negative"));
}

TEST(ParseByteSizeTest, RejectsOverflow) {
  for (const char* text : {"18446744073709551616", "99999999999999999999999", "0x10000000000000000",
                           "16777216T", "17179869184G"}) {
    EXPECT_EQ(ParseByteSize(text).status().code(), absl::StatusCode::kOutOfRange) << text;
  }
}

TEST(FormatBytesTest, PicksBinaryUnit) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(1023), "1023 B");
  EXPECT_EQ(FormatBytes(1024), "1.0 KiB");
  EXPECT_EQ(FormatBytes(1536), "1.5 KiB");
  EXPECT_EQ(FormatBytes(561617715), "535.6 MiB");
  EXPECT_EQ(FormatBytes(kGiB), "1.0 GiB");
  // Would round to "1024.0 MiB" in the smaller unit.
  EXPECT_EQ(FormatBytes(kGiB - 1), "1.0 GiB");
  EXPECT_EQ(FormatBytes(kMax), "16.0 EiB");
}

TEST(FormatProgressLineTest, MatchesDocumentedLayout) {
  EXPECT_EQ(FormatProgressLine(561617715, kGiB, 812.4 * (1 << 20)),
            "[##########----------]  52.3%  535.6 MiB / 1.0 GiB  812.4 MiB/s  ETA 0:01");
}

TEST(FormatProgressLineTest, UnknownRateHasNoEta) {
  EXPECT_EQ(FormatProgressLine(0, kGiB, 0),
            "[--------------------]   0.0%  0 B / 1.0 GiB  0 B/s  ETA --:--");
}

TEST(FormatProgressLineTest, CompleteAndEmpty) {
  const std::string full = "[####################] 100.0%  ";
  EXPECT_EQ(FormatProgressLine(kGiB, kGiB, 0), full + "1.0 GiB / 1.0 GiB  0 B/s  ETA 0:00");
  EXPECT_EQ(FormatProgressLine(0, 0, 0), full + "0 B / 0 B  0 B/s  ETA 0:00");
}

TEST(FormatProgressLineTest, NeverShowsHundredPercentEarly) {
  EXPECT_THAT(FormatProgressLine(kGiB - 1, kGiB, 1), HasSubstr("[###################-]  99.9%"));
}

TEST(FormatProgressLineTest, LongEtas) {
  EXPECT_THAT(FormatProgressLine(0, 3725, 1), HasSubstr("ETA 1:02:05"));
  EXPECT_THAT(FormatProgressLine(0, 125, 1), HasSubstr("ETA 2:05"));
  EXPECT_THAT(FormatProgressLine(0, kGiB, 1), HasSubstr("ETA >99h"));
}

json Region(const std::string& name, uint64_t size, uint64_t present, uint64_t zero,
            bool complete) {
  return {{"name", name},
          {"size", size},
          {"pages_total", (size + 4095) / 4096},
          {"pages_present", present},
          {"pages_dirty", 7},
          {"pages_zero", zero},
          {"bytes_fetched", present * 4096},
          {"demand_fetches", 12},
          {"fetch_latency_us", {{"p50", 85}, {"p99", 910}, {"max", 4200}}},
          {"complete", complete},
          {"future_field", "ignored"}};
}

json Reply() {
  return {
      {"ok", true},
      {"source", "connected"},
      {"complete", false},
      {"regions",
       {Region("pc.ram", kGiB, 137000, 100, false), Region("vga.vram", 16 << 20, 4000, 96, true)}},
      {"server", {{"version", 2}}}};
}

TEST(ParseStatusReplyTest, DecodesAndIgnoresUnknownKeys) {
  absl::StatusOr<DaemonStatus> status = ParseStatusReply(Reply());
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->source, "connected");
  EXPECT_FALSE(status->complete);
  ASSERT_EQ(status->regions.size(), 2u);
  const RegionStatus& ram = status->regions[0];
  EXPECT_EQ(ram.name, "pc.ram");
  EXPECT_EQ(ram.size, kGiB);
  EXPECT_EQ(ram.pages_total, 262144u);
  EXPECT_EQ(ram.pages_present, 137000u);
  EXPECT_EQ(ram.pages_dirty, 7u);
  EXPECT_EQ(ram.pages_zero, 100u);
  EXPECT_EQ(ram.demand_fetches, 12u);
  EXPECT_EQ(ram.fetch_p50_us, 85u);
  EXPECT_EQ(ram.fetch_p99_us, 910u);
  EXPECT_EQ(ram.fetch_max_us, 4200u);
  EXPECT_TRUE(status->regions[1].complete);
}

TEST(ParseStatusReplyTest, RejectsMissingOrMistypedFields) {
  json missing = Reply();
  missing["regions"][1].erase("pages_zero");
  json negative = Reply();
  negative["regions"][0]["pages_present"] = -1;
  json fractional = Reply();
  fractional["regions"][0]["fetch_latency_us"]["p99"] = 1.5;
  json no_regions = Reply();
  no_regions.erase("regions");

  absl::Status status = ParseStatusReply(missing).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("region \"vga.vram\": \"pages_zero\" is missing"));
  EXPECT_THAT(std::string(ParseStatusReply(negative).status().message()),
              HasSubstr("pages_present"));
  EXPECT_THAT(std::string(ParseStatusReply(fractional).status().message()), HasSubstr("p99"));
  EXPECT_THAT(std::string(ParseStatusReply(no_regions).status().message()),
              HasSubstr("\"regions\""));
  EXPECT_FALSE(ParseStatusReply(json::array()).ok());
}

TEST(LocalBytesTest, CountsPresentAndZeroCappedAtSize) {
  RegionStatus r;
  r.size = 10000;  // three pages, the last one partial
  r.pages_present = 1;
  r.pages_zero = 1;
  EXPECT_EQ(LocalBytes(r), 8192u);
  r.pages_zero = 2;
  EXPECT_EQ(LocalBytes(r), 10000u);
  r.pages_present = kMax;  // a broken daemon must not wrap the sum around
  EXPECT_EQ(LocalBytes(r), 10000u);
}

TEST(IsCompleteTest, DaemonFlagOrEveryRegion) {
  DaemonStatus status = *ParseStatusReply(Reply());
  EXPECT_FALSE(IsComplete(status));
  status.regions[0].complete = true;
  EXPECT_TRUE(IsComplete(status));
  status.regions[0].complete = false;
  status.complete = true;
  EXPECT_TRUE(IsComplete(status));
}

TEST(FormatStatusTableTest, HasSummaryHeaderAndOneRowPerRegion) {
  std::string table = FormatStatusTable(*ParseStatusReply(Reply()));
  std::vector<std::string> lines = absl::StrSplit(table, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 4u) << table;
  EXPECT_THAT(lines[0], HasSubstr("source: connected"));
  EXPECT_THAT(lines[0], HasSubstr("complete: no"));
  for (const char* column : {"REGION", "SIZE", "PRESENT", "DIRTY", "ZERO", "TOTAL", "LOCAL",
                             "FETCHED", "DEMAND", "P50 µs", "P99 µs", "MAX µs", "COMPLETE"}) {
    EXPECT_THAT(lines[1], HasSubstr(column));
  }
  // pc.ram: (137000 + 100) of 262144 pages local.
  for (const char* field :
       {"pc.ram", "1.0 GiB", "137000", "262144", "52.2%", "535.2 MiB", "85", "910", "4200", "no"}) {
    EXPECT_THAT(lines[2], HasSubstr(field));
  }
  for (const char* field : {"vga.vram", "16.0 MiB", "4096", "100.0%", "yes"}) {
    EXPECT_THAT(lines[3], HasSubstr(field));
  }
  // Numbers are right-aligned under their heading.
  size_t total_end = lines[1].find("TOTAL") + 5;
  EXPECT_EQ(lines[2].substr(total_end - 6, 6), "262144");
  EXPECT_EQ(lines[3].substr(total_end - 4, 4), "4096");
}

TEST(FormatStatusTableTest, ReplicasAddALine) {
  nlohmann::json reply = Reply();
  std::vector<std::string> plain =
      absl::StrSplit(FormatStatusTable(*ParseStatusReply(reply)), '\n', absl::SkipEmpty());
  reply["current_source"] = "tcp://10.0.0.2:7070";
  reply["sources"] = nlohmann::json::array({nlohmann::json::object(), nlohmann::json::object()});
  reply["failovers"] = 3;
  reply["fetch_timeouts"] = 0;
  std::string table = FormatStatusTable(*ParseStatusReply(reply));
  std::vector<std::string> lines = absl::StrSplit(table, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), plain.size() + 1) << table;
  EXPECT_THAT(lines[1], HasSubstr("page server: tcp://10.0.0.2:7070 (of 2 replicas)"));
  EXPECT_THAT(lines[1], HasSubstr("failovers: 3"));
  reply["failovers"] = -1;
  EXPECT_FALSE(ParseStatusReply(reply).ok());
}

TEST(FormatStatusTableTest, NoRegions) {
  DaemonStatus status;
  status.source = "none";
  std::string table = FormatStatusTable(status);
  EXPECT_THAT(table, HasSubstr("source: none"));
  EXPECT_THAT(table, HasSubstr("regions: 0"));
}

}  // namespace
}  // namespace lazyram::client
