// Case 7: scale.
//  - A huge sparse image (ftruncate only, as `truncate -s 1T`): how long the
//    page server takes to start and the mount to become ready (--prefetch
//    off; the harness polls readiness every 20 ms), and both daemons' RSS.
//  - Case 1 (4 KiB first touches, MADV_RANDOM, --prefetch off) on a small
//    and a large region. Both images are sparse with random data only at
//    the pages to be touched, so both are cheap to create and every touch
//    fetches one data page: any difference comes from the region size.
//    Both are mounted at once and touched alternately.
#include <sys/mman.h>

#include <memory>
#include <vector>

#include "absl/strings/str_format.h"
#include "tools/bench/bench.h"
#include "tools/bench/bench_util.h"
#include "tools/bench/daemons.h"
#include "tools/bench/host_memory.h"
#include "tools/bench/images.h"
#include "tools/bench/mapping.h"

namespace lazyram::bench {
namespace {

double MiB(uint64_t bytes) { return static_cast<double>(bytes) / static_cast<double>(kMiB); }

nlohmann::json SparseMount(const testing::TempDir& dir, uint64_t gib) {
  const ScratchFile image = WriteSparseImage(dir.Sub("sparse.img"), gib * kGiB, {}, 0);
  const Stopwatch server_watch;
  auto server = StartServer(image.path());
  const double server_ms = server_watch.Millis();
  const Stopwatch mount_watch;
  auto mount = StartMount(dir, *server, {});
  const double mount_ms = mount_watch.Millis();
  return {{"region_bytes", RegionStatus(*mount).at("size").get<uint64_t>()},
          {"server_start_ms", server_ms},
          {"mount_ms", mount_ms},
          {"daemon_rss_mib", MiB(ProcessMemory::Read(DaemonPid(*mount)).rss)},
          {"server_rss_mib", MiB(ProcessMemory::Read(server->pid()).rss)}};
}

// A sparse region with data at `touches` random pages, served and mounted
// (--prefetch off), mapped MADV_RANDOM. Members in cleanup order: the
// mapping goes before the mount, the mount before its server and image.
struct SparseRegion {
  SparseRegion(const testing::TempDir& dir, const std::string& name, uint64_t gib, int touches,
               uint64_t seed)
      : offsets(PageOffsets(gib * kGiB, touches, seed)),
        image(WriteSparseImage(dir.Sub(name), gib * kGiB, offsets, seed)),
        server(StartServer(image.path())),
        mount(StartMount(dir, *server, {})),
        mapping(mount->File(kRegion), {.advice = MADV_RANDOM}) {}

  static std::vector<uint64_t> PageOffsets(uint64_t size, int touches, uint64_t seed) {
    std::vector<uint64_t> offsets = SampleDistinct(size / kPage, touches, seed);
    for (uint64_t& offset : offsets) offset *= kPage;
    return offsets;
  }

  const std::vector<uint64_t> offsets;
  const ScratchFile image;
  const std::unique_ptr<testing::PageServerProcess> server;
  const std::unique_ptr<testing::MountProcess> mount;
  const Mapping mapping;
};

}  // namespace

nlohmann::json RunScaleCase(const Options& o, const testing::TempDir& dir) {
  nlohmann::json r = {{"sparse_gib", o.scale_sparse_gib},
                      {"small_gib", o.scale_small_gib},
                      {"large_gib", o.scale_large_gib},
                      {"touches", o.scale_touches}};
  r["sparse"] = SparseMount(dir, o.scale_sparse_gib);
  // Both regions at once, touched alternately, so that whatever else the
  // host is doing weighs on both alike.
  const SparseRegion small_region(dir, "small.img", o.scale_small_gib, o.scale_touches, 46);
  const SparseRegion large_region(dir, "large.img", o.scale_large_gib, o.scale_touches, 47);
  std::vector<double> small_us, large_us;
  for (size_t i = 0; i < small_region.offsets.size(); ++i) {
    small_us.push_back(TouchOnce(small_region.mapping, small_region.offsets[i]));
    large_us.push_back(TouchOnce(large_region.mapping, large_region.offsets[i]));
  }
  const Latency small = Summarize(std::move(small_us));
  const Latency large = Summarize(std::move(large_us));
  r["small"] = small.Json();
  r["large"] = large.Json();
  r["large_over_small_p50"] = Ratio(large.p50, small.p50);
  r["large_over_small_p99"] = Ratio(large.p99, small.p99);
  return r;
}

void PrintScaleCase(const nlohmann::json& r) {
  const nlohmann::json& s = r.at("sparse");
  PrintSection(absl::StrFormat("7. scale: a %d GiB sparse image; case 1 at %d GiB vs %d GiB",
                               r.at("sparse_gib").get<int>(), r.at("small_gib").get<int>(),
                               r.at("large_gib").get<int>()));
  PrintLine(absl::StrFormat(
      "%d GiB sparse: mount %.0f ms (target < 1000), daemon RSS %.0f MiB (target < 200); "
      "page server start %.0f ms, RSS %.0f MiB",
      r.at("sparse_gib").get<int>(), Num(s, "mount_ms"), Num(s, "daemon_rss_mib"),
      Num(s, "server_start_ms"), Num(s, "server_rss_mib")));
  PrintLatencyHeader();
  PrintLatencyRow(absl::StrFormat("%d random pages of %d GiB (sparse)", r.at("touches").get<int>(),
                                  r.at("small_gib").get<int>()),
                  r.at("small"));
  PrintLatencyRow(absl::StrFormat("%d random pages of %d GiB (sparse)", r.at("touches").get<int>(),
                                  r.at("large_gib").get<int>()),
                  r.at("large"),
                  absl::StrFormat("%.2fx p50, %.2fx p99 (target p50 <= 1.2x)",
                                  Num(r, "large_over_small_p50"), Num(r, "large_over_small_p99")));
}

}  // namespace lazyram::bench
