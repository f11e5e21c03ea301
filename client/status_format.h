// What lazyramctl prints, kept apart from the program so it can be tested:
// the decoded "status" reply, the table and progress line made from it, and
// the byte-size parser for command-line arguments.
//
// Everything here is pure (no I/O, no shared state) and thread-compatible.
#ifndef LAZYRAM_CLIENT_STATUS_FORMAT_H_
#define LAZYRAM_CLIENT_STATUS_FORMAT_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace lazyram::client {

// The control protocol counts pages of this size, whatever the guest uses.
inline constexpr uint64_t kStatusPageSize = 4096;

// One entry of the reply's "regions" array. Page counts follow the daemon:
// pages_present includes dirty pages; zero pages are counted only in
// pages_zero.
struct RegionStatus {
  std::string name;
  uint64_t size = 0;
  uint64_t pages_total = 0;
  uint64_t pages_present = 0;
  uint64_t pages_dirty = 0;
  uint64_t pages_zero = 0;
  uint64_t bytes_fetched = 0;
  uint64_t demand_fetches = 0;
  uint64_t fetch_p50_us = 0;
  uint64_t fetch_p99_us = 0;
  uint64_t fetch_max_us = 0;
  bool complete = false;
};

struct DaemonStatus {
  std::string source;  // "connected", "reconnecting", "detached", "local" or "none"
  bool complete = false;
  // With page-server replicas (optional keys; empty / 0 when absent).
  std::string current_source;
  size_t source_count = 0;
  uint64_t failovers = 0;
  uint64_t fetch_timeouts = 0;
  std::vector<RegionStatus> regions;
};

// Decodes a "status" reply. Unknown keys are ignored; a missing or
// mistyped known key is kInternal ("malformed reply from daemon: ...").
absl::StatusOr<DaemonStatus> ParseStatusReply(const nlohmann::json& reply);

// Bytes of `region` readable without the page server: present and zero
// pages, capped at the region size (the last page may be partial).
uint64_t LocalBytes(const RegionStatus& region);
uint64_t LocalBytes(const DaemonStatus& status);
uint64_t TotalBytes(const DaemonStatus& status);

// True when the daemon says so, or when every region says so.
bool IsComplete(const DaemonStatus& status);

// "512 B", "4.0 KiB", "535.6 MiB", "1.0 GiB": binary units, one decimal.
std::string FormatBytes(uint64_t bytes);

// The `status` output: a summary line with the source state (and, with
// several replicas or after a fetch timeout, a line saying which replica is
// in use), a column header, then one row per region. Ends with '\n'.
std::string FormatStatusTable(const DaemonStatus& status);

// The `wait --progress` line, without '\r' or '\n':
//   [##########----------]  52.3%  535.6 MiB / 1.0 GiB  812.4 MiB/s  ETA 0:01
// A rate <= 0 shows the ETA as "--:--".
std::string FormatProgressLine(uint64_t local_bytes, uint64_t total_bytes, double bytes_per_second);

// Parses a byte count: decimal ("4096"), hexadecimal ("0x1000"), or decimal
// with a binary suffix K, M, G or T, optionally followed by "iB" or "B"
// ("64K", "2MiB", "1GB" = 2^30). "B" alone is also accepted. Case-insensitive
// suffixes; no signs, spaces or fractions. kInvalidArgument for anything
// else, kOutOfRange when the value does not fit in 64 bits.
absl::StatusOr<uint64_t> ParseByteSize(std::string_view text);

}  // namespace lazyram::client

#endif  // LAZYRAM_CLIENT_STATUS_FORMAT_H_
