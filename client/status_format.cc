#include "client/status_format.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace lazyram::client {
namespace {

using nlohmann::json;

absl::Status Malformed(absl::string_view where, absl::string_view what) {
  return absl::InternalError(absl::StrCat("malformed reply from daemon: ", where, what));
}

// Reads obj[key] as an unsigned integer. nlohmann would silently convert a
// negative or fractional number, so the JSON type is checked first.
absl::Status GetU64(const json& obj, const char* key, absl::string_view where, uint64_t* out) {
  auto it = obj.find(key);
  // The parser stores non-negative numbers as unsigned, but a json built in
  // code (as in tests) holds them as signed.
  bool non_negative = it != obj.end() && (it->is_number_unsigned() ||
                                          (it->is_number_integer() && it->get<int64_t>() >= 0));
  if (!non_negative) {
    return Malformed(where, absl::StrCat("\"", key, "\" is missing or not an unsigned integer"));
  }
  *out = it->get<uint64_t>();
  return absl::OkStatus();
}

absl::Status GetBool(const json& obj, const char* key, absl::string_view where, bool* out) {
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_boolean()) {
    return Malformed(where, absl::StrCat("\"", key, "\" is missing or not a boolean"));
  }
  *out = it->get<bool>();
  return absl::OkStatus();
}

absl::Status GetString(const json& obj, const char* key, absl::string_view where,
                       std::string* out) {
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_string()) {
    return Malformed(where, absl::StrCat("\"", key, "\" is missing or not a string"));
  }
  *out = it->get<std::string>();
  return absl::OkStatus();
}

absl::StatusOr<RegionStatus> ParseRegion(const json& obj, size_t index) {
  std::string where = absl::StrCat("regions[", index, "]: ");
  if (!obj.is_object()) return Malformed(where, "not an object");
  RegionStatus r;
  absl::Status s = GetString(obj, "name", where, &r.name);
  if (s.ok()) where = absl::StrCat("region \"", absl::CHexEscape(r.name), "\": ");
  if (s.ok()) s = GetU64(obj, "size", where, &r.size);
  if (s.ok()) s = GetU64(obj, "pages_total", where, &r.pages_total);
  if (s.ok()) s = GetU64(obj, "pages_present", where, &r.pages_present);
  if (s.ok()) s = GetU64(obj, "pages_dirty", where, &r.pages_dirty);
  if (s.ok()) s = GetU64(obj, "pages_zero", where, &r.pages_zero);
  if (s.ok()) s = GetU64(obj, "bytes_fetched", where, &r.bytes_fetched);
  if (s.ok()) s = GetU64(obj, "demand_fetches", where, &r.demand_fetches);
  if (s.ok()) s = GetBool(obj, "complete", where, &r.complete);
  if (!s.ok()) return s;
  auto latency = obj.find("fetch_latency_us");
  if (latency == obj.end() || !latency->is_object()) {
    return Malformed(where, "\"fetch_latency_us\" is missing or not an object");
  }
  const std::string latency_where = absl::StrCat(where, "fetch_latency_us: ");
  s = GetU64(*latency, "p50", latency_where, &r.fetch_p50_us);
  if (s.ok()) s = GetU64(*latency, "p99", latency_where, &r.fetch_p99_us);
  if (s.ok()) s = GetU64(*latency, "max", latency_where, &r.fetch_max_us);
  if (!s.ok()) return s;
  return r;
}

uint64_t SaturatingAdd(uint64_t a, uint64_t b) {
  return b > std::numeric_limits<uint64_t>::max() - a ? std::numeric_limits<uint64_t>::max()
                                                      : a + b;
}

// Percent rounded down to a tenth, so "100.0%" is only ever shown when done.
double PercentLocal(uint64_t local, uint64_t total) {
  if (total == 0 || local >= total) return 100.0;
  return std::floor(static_cast<long double>(local) * 1000 / total) / 10;
}

// Columns are aligned by characters, not bytes: headers hold "µs", and
// region names may hold any UTF-8.
size_t DisplayWidth(absl::string_view s) {
  return std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; });
}

std::string FormatEta(uint64_t remaining_bytes, double bytes_per_second) {
  if (remaining_bytes == 0) return "0:00";
  if (!(bytes_per_second > 0)) return "--:--";
  double seconds = std::ceil(static_cast<double>(remaining_bytes) / bytes_per_second);
  constexpr double kMaxShown = 100 * 3600 - 1;
  if (seconds > kMaxShown) return ">99h";
  auto total = static_cast<uint64_t>(seconds);
  uint64_t h = total / 3600, m = total / 60 % 60, s = total % 60;
  if (h > 0) return absl::StrFormat("%d:%02d:%02d", h, m, s);
  return absl::StrFormat("%d:%02d", m, s);
}

}  // namespace

absl::StatusOr<DaemonStatus> ParseStatusReply(const json& reply) {
  if (!reply.is_object()) return Malformed("", "status reply is not an object");
  DaemonStatus status;
  absl::Status s = GetString(reply, "source", "", &status.source);
  if (s.ok()) s = GetBool(reply, "complete", "", &status.complete);
  if (s.ok() && reply.contains("current_source")) {
    s = GetString(reply, "current_source", "", &status.current_source);
  }
  if (s.ok() && reply.contains("failovers")) {
    s = GetU64(reply, "failovers", "", &status.failovers);
  }
  if (s.ok() && reply.contains("fetch_timeouts")) {
    s = GetU64(reply, "fetch_timeouts", "", &status.fetch_timeouts);
  }
  if (!s.ok()) return s;
  if (auto sources = reply.find("sources"); sources != reply.end() && sources->is_array()) {
    status.source_count = sources->size();
  }
  auto regions = reply.find("regions");
  if (regions == reply.end() || !regions->is_array()) {
    return Malformed("", "\"regions\" is missing or not an array");
  }
  status.regions.reserve(regions->size());
  for (size_t i = 0; i < regions->size(); ++i) {
    absl::StatusOr<RegionStatus> region = ParseRegion((*regions)[i], i);
    if (!region.ok()) return region.status();
    status.regions.push_back(*std::move(region));
  }
  return status;
}

uint64_t LocalBytes(const RegionStatus& region) {
  uint64_t pages = SaturatingAdd(region.pages_present, region.pages_zero);
  if (pages > region.size / kStatusPageSize) return region.size;
  return std::min(pages * kStatusPageSize, region.size);
}

uint64_t LocalBytes(const DaemonStatus& status) {
  uint64_t sum = 0;
  for (const RegionStatus& r : status.regions) sum = SaturatingAdd(sum, LocalBytes(r));
  return sum;
}

uint64_t TotalBytes(const DaemonStatus& status) {
  uint64_t sum = 0;
  for (const RegionStatus& r : status.regions) sum = SaturatingAdd(sum, r.size);
  return sum;
}

bool IsComplete(const DaemonStatus& status) {
  return status.complete || std::all_of(status.regions.begin(), status.regions.end(),
                                        [](const RegionStatus& r) { return r.complete; });
}

std::string FormatBytes(uint64_t bytes) {
  static constexpr std::array<const char*, 7> kUnits = {"B",   "KiB", "MiB", "GiB",
                                                        "TiB", "PiB", "EiB"};
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  double value = static_cast<double>(bytes);
  size_t unit = 0;
  // 1023.95 rather than 1024: the value is printed rounded to one decimal,
  // and "1024.0 MiB" should read "1.0 GiB".
  while (value >= 1023.95 && unit + 1 < kUnits.size()) {
    value /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.1f %s", value, kUnits[unit]);
}

std::string FormatStatusTable(const DaemonStatus& status) {
  const uint64_t local = LocalBytes(status);
  const uint64_t total = TotalBytes(status);
  std::string out =
      absl::StrFormat("source: %s   complete: %s   local: %s of %s (%.1f%%)   regions: %d\n",
                      status.source, IsComplete(status) ? "yes" : "no", FormatBytes(local),
                      FormatBytes(total), PercentLocal(local, total), status.regions.size());
  if (status.source_count > 1 || status.fetch_timeouts > 0) {
    absl::StrAppendFormat(
        &out, "page server: %s (of %d replicas)   failovers: %d   fetch timeouts: %d\n",
        status.current_source, status.source_count, status.failovers, status.fetch_timeouts);
  }

  using Row = std::vector<std::string>;
  std::vector<Row> rows = {{"REGION", "SIZE", "PRESENT", "DIRTY", "ZERO", "TOTAL", "LOCAL",
                            "FETCHED", "DEMAND", "P50 µs", "P99 µs", "MAX µs", "COMPLETE"}};
  for (const RegionStatus& r : status.regions) {
    rows.push_back(
        {r.name, FormatBytes(r.size), absl::StrCat(r.pages_present), absl::StrCat(r.pages_dirty),
         absl::StrCat(r.pages_zero), absl::StrCat(r.pages_total),
         absl::StrFormat("%.1f%%", PercentLocal(LocalBytes(r), r.size)),
         FormatBytes(r.bytes_fetched), absl::StrCat(r.demand_fetches), absl::StrCat(r.fetch_p50_us),
         absl::StrCat(r.fetch_p99_us), absl::StrCat(r.fetch_max_us), r.complete ? "yes" : "no"});
  }
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const Row& row : rows) {
    for (size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], DisplayWidth(row[c]));
  }
  // The name and the yes/no column read left-aligned; numbers right-aligned.
  for (const Row& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      std::string pad(widths[c] - DisplayWidth(row[c]), ' ');
      bool left = c == 0 || c + 1 == row.size();
      if (c > 0) line += "  ";
      absl::StrAppend(&line, left ? row[c] : pad, left ? pad : row[c]);
    }
    absl::StripTrailingAsciiWhitespace(&line);
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

std::string FormatProgressLine(uint64_t local_bytes, uint64_t total_bytes,
                               double bytes_per_second) {
  constexpr size_t kBarWidth = 20;
  local_bytes = std::min(local_bytes, total_bytes);
  size_t filled =
      total_bytes == 0
          ? kBarWidth
          : static_cast<size_t>(static_cast<long double>(local_bytes) * kBarWidth / total_bytes);
  uint64_t rate = bytes_per_second > 0 ? static_cast<uint64_t>(bytes_per_second) : 0;
  return absl::StrFormat("[%s%s] %5.1f%%  %s / %s  %s/s  ETA %s", std::string(filled, '#'),
                         std::string(kBarWidth - filled, '-'),
                         PercentLocal(local_bytes, total_bytes), FormatBytes(local_bytes),
                         FormatBytes(total_bytes), FormatBytes(rate),
                         FormatEta(total_bytes - local_bytes, bytes_per_second));
}

absl::StatusOr<uint64_t> ParseByteSize(std::string_view std_text) {
  const absl::string_view text(std_text.data(), std_text.size());
  const std::string quoted = absl::StrCat("\"", absl::CHexEscape(text), "\"");
  auto invalid = [&quoted] {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid byte size ", quoted, ": expected e.g. 4096, 0x1000, 64K or 2GiB"));
  };
  auto overflow = [&quoted] {
    return absl::OutOfRangeError(absl::StrCat("byte size ", quoted, " does not fit in 64 bits"));
  };
  if (absl::StartsWith(text, "-")) {
    return absl::InvalidArgumentError(absl::StrCat("invalid byte size ", quoted, ": negative"));
  }

  uint64_t base = 10;
  absl::string_view digits = text;
  if (absl::StartsWithIgnoreCase(text, "0x")) {
    base = 16;
    digits.remove_prefix(2);
  }
  uint64_t value = 0;
  size_t n = 0;
  for (; n < digits.size(); ++n) {
    char c = absl::ascii_tolower(digits[n]);
    uint64_t d;
    if (absl::ascii_isdigit(c)) {
      d = c - '0';
    } else if (base == 16 && c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else {
      break;
    }
    if (value > (std::numeric_limits<uint64_t>::max() - d) / base) return overflow();
    value = value * base + d;
  }
  if (n == 0) return invalid();
  absl::string_view suffix = digits.substr(n);
  // Hex takes no suffix: "0x1B" would be ambiguous.
  if (base == 16 && !suffix.empty()) return invalid();

  int shift = 0;
  if (!suffix.empty()) {
    switch (absl::ascii_toupper(suffix[0])) {
      case 'K':
        shift = 10;
        break;
      case 'M':
        shift = 20;
        break;
      case 'G':
        shift = 30;
        break;
      case 'T':
        shift = 40;
        break;
      default:
        break;
    }
    if (shift > 0) {
      suffix.remove_prefix(1);
      if (!suffix.empty() && !absl::EqualsIgnoreCase(suffix, "B") &&
          !absl::EqualsIgnoreCase(suffix, "iB")) {
        return invalid();
      }
    } else if (!absl::EqualsIgnoreCase(suffix, "B")) {
      return invalid();
    }
  }
  if (value > (std::numeric_limits<uint64_t>::max() >> shift)) return overflow();
  return value << shift;
}

}  // namespace lazyram::client
