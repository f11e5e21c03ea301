// Case 5: guest-write pressure. A region mapped MAP_SHARED read-write on a
// fully local mount (--prefetch on, after `lazyramctl wait`) gets random
// distinct pages dirtied, by default with one 8-byte store per page: that
// isolates what a dirtied page costs — the write fault, dirty accounting and
// throttling, writeback as FUSE WRITEs — from memcpy bandwidth, which tmpfs
// and lazyram share (--write-whole-pages memsets each page instead). The
// mapping is populated (MAP_POPULATE, read faults) first, as a running
// guest's RAM is, so the writes are not also first reads. Throughput counts
// 4 KiB per dirtied page, without and with the final msync(MS_SYNC) that
// writes everything back; a stall is one page write that took over 1 ms.
// lazyram runs twice: with passthrough (the default; the file, opened once
// the region is complete, maps the memfd store itself) and with
// --passthrough off (cached FUSE mode: every first store to a clean page is
// a write-protect fault, page_mkwrite, dirty accounting and a FUSE WRITE).
// The baseline is the same on a tmpfs copy of the image.
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <random>

#include "absl/strings/str_format.h"
#include "tools/bench/bench.h"
#include "tools/bench/bench_util.h"
#include "tools/bench/daemons.h"
#include "tools/bench/images.h"
#include "tools/bench/mapping.h"

namespace lazyram::bench {
namespace {

constexpr double kStallUs = 1000;

nlohmann::json DirtyPages(const std::string& path, const std::vector<uint64_t>& offsets,
                          bool whole_pages) {
  const Stopwatch populate_watch;
  const Mapping mapping(path, {.access = Mapping::Access::kReadWrite, .populate = true});
  const double populate_ms = populate_watch.Millis();

  std::mt19937_64 rng(5);
  std::vector<double> us;
  us.reserve(offsets.size());
  const Stopwatch watch;
  for (uint64_t offset : offsets) {
    us.push_back(whole_pages ? FillPage(mapping, offset, static_cast<uint8_t>(rng()))
                             : WriteOnce(mapping, offset, rng()));
  }
  const double seconds = watch.Seconds();

  const Stopwatch msync_watch;
  if (msync(mapping.data(), mapping.size(), MS_SYNC) != 0) FailErrno("msync " + path);
  const double msync_ms = msync_watch.Millis();

  const int stalls =
      static_cast<int>(std::count_if(us.begin(), us.end(), [](double t) { return t > kStallUs; }));
  const Latency l = Summarize(std::move(us));
  const double mb = static_cast<double>(offsets.size() * kPage) / 1e6;
  return {{"MBps", mb / seconds},      {"MBps_with_msync", mb / (seconds + msync_ms / 1e3)},
          {"write_s", seconds},        {"p50_us", l.p50},
          {"p99_us", l.p99},           {"max_us", l.max},
          {"stalls_over_1ms", stalls}, {"msync_ms", msync_ms},
          {"populate_ms", populate_ms}};
}

}  // namespace

nlohmann::json RunWriteCase(const Options& o, const testing::TempDir& dir) {
  const uint64_t size = o.write_mib * kMiB;
  const ScratchFile image = WriteRandomImage(dir.Sub("write.img"), size, 17);
  std::vector<uint64_t> offsets = SampleDistinct(size / kPage, o.write_pages, 45);
  for (uint64_t& offset : offsets) offset *= kPage;

  nlohmann::json r = {{"region_mib", o.write_mib},
                      {"pages", offsets.size()},
                      {"bytes_per_page", o.write_whole_pages ? kPage : 8}};
  auto server = StartServer(image.path());
  for (const bool passthrough : {true, false}) {
    auto mount = StartMount(dir, *server, {.prefetch = true, .passthrough = passthrough});
    WaitComplete(*mount);
    // The pusher's helper may still hold the file (cached) for the last
    // pulled runs; an open meanwhile would stay cached.
    WaitNoOpenFiles(*mount);
    const char* key = passthrough ? "lazyram" : "lazyram_cached";
    r[key] = DirtyPages(mount->File(kRegion), offsets, o.write_whole_pages);
    r[key]["passthrough"] = Passthrough(*mount);
    if (r[key]["passthrough"].get<bool>() != passthrough) {
      Fail(std::string("case 5: the region did not open in ") +
           (passthrough ? "passthrough" : "cached") + " mode");
    }
  }
  {
    const ScratchFile copy = TmpfsCopy(image.path());
    r["tmpfs"] = DirtyPages(copy.path(), offsets, o.write_whole_pages);
  }
  r["lazyram_over_tmpfs_MBps"] = Ratio(Num(r["lazyram"], "MBps"), Num(r["tmpfs"], "MBps"));
  r["lazyram_cached_over_tmpfs_MBps"] =
      Ratio(Num(r["lazyram_cached"], "MBps"), Num(r["tmpfs"], "MBps"));
  return r;
}

void PrintWriteCase(const nlohmann::json& r) {
  const int bytes = r.at("bytes_per_page").get<int>();
  PrintSection(
      absl::StrFormat("5. dirtying %d random pages (%s each) of a mapped %d MiB region, all local",
                      r.at("pages").get<int>(), bytes == 8 ? "one 8-byte store" : "a 4 KiB memset",
                      r.at("region_mib").get<int>()));
  std::printf("  %-32s %8s %10s %8s %8s %8s %6s %10s\n", "", "MB/s", "w/ msync", "p50 µs", "p99 µs",
              "max µs", ">1ms", "msync ms");
  const std::pair<const char*, const char*> rows[] = {
      {"lazyram", "lazyram, passthrough (waited)"},
      {"lazyram_cached", "lazyram, --passthrough off"},
      {"tmpfs", "tmpfs"}};
  for (const auto& [key, label] : rows) {
    const nlohmann::json& x = r.at(key);
    std::printf("  %-32s %8.0f %10.0f %8.2f %8.1f %8.0f %6d %10.1f\n", label, Num(x, "MBps"),
                Num(x, "MBps_with_msync"), Num(x, "p50_us"), Num(x, "p99_us"), Num(x, "max_us"),
                x.at("stalls_over_1ms").get<int>(), Num(x, "msync_ms"));
  }
  PrintLine(absl::StrFormat(
      "lazyram / tmpfs throughput: passthrough %.0f%%, cached %.0f%% (target >= 50%%, no stalls)",
      100 * Num(r, "lazyram_over_tmpfs_MBps"), 100 * Num(r, "lazyram_cached_over_tmpfs_MBps")));
}

}  // namespace lazyram::bench
