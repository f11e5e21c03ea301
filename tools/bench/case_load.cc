// Case 3: faults under load. Case-1 touches (4 KiB, MADV_RANDOM) of random
// pages in the last quarter of the image, far from where the background
// pull is (the puller sweeps from page 0 up), on a mount with --prefetch on,
// starting as soon as it is mounted so the pull runs throughout — by
// default yielding while the touches fault (--pull-yield), and again with
// --pull-yield 0 at full speed; the baseline is the same touches on an idle --prefetch off
// mount.
//
// "Already local" counts touches that started no demand fetch: the touches
// minus the growth of the mount's demand_fetches counter while touching
// (each touch of an absent page starts one). "In page cache" counts touches
// whose page mincore() showed resident just before: no READ at all.
#include <sys/mman.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "absl/strings/str_format.h"
#include "tools/bench/bench.h"
#include "tools/bench/bench_util.h"
#include "tools/bench/daemons.h"
#include "tools/bench/images.h"
#include "tools/bench/mapping.h"

namespace lazyram::bench {

namespace {

// The touches on a --prefetch on mount, started as soon as it is mounted.
nlohmann::json TouchDuringPull(const testing::TempDir& dir,
                               const testing::PageServerProcess& server,
                               const std::vector<uint64_t>& offsets,
                               std::optional<double> yield_ms) {
  const Mapping::Options random = {.advice = MADV_RANDOM};
  auto mount = StartMount(dir, server, {.prefetch = true, .pull_yield_ms = yield_ms});
  const nlohmann::json before = RegionStatus(*mount);
  std::vector<double> us;
  int in_page_cache = 0;
  {
    const Mapping mapping(mount->File(kRegion), random);
    for (uint64_t offset : offsets) {
      in_page_cache += IsResident(mapping, offset) ? 1 : 0;
      us.push_back(TouchOnce(mapping, offset));
    }
  }
  const nlohmann::json after = RegionStatus(*mount);
  const int64_t fetches =
      after.at("demand_fetches").get<int64_t>() - before.at("demand_fetches").get<int64_t>();
  const int64_t touches = static_cast<int64_t>(offsets.size());
  nlohmann::json r = Summarize(std::move(us)).Json();
  r["already_local"] = std::clamp<int64_t>(touches - fetches, 0, touches);
  r["in_page_cache"] = in_page_cache;
  r["pull_progress_before"] = LocalFraction(before);
  r["pull_progress_after"] = LocalFraction(after);
  r["pull_outlasted_touches"] = !after.at("complete").get<bool>();
  return r;
}

}  // namespace

nlohmann::json RunLoadCase(const Options& o, const testing::TempDir& dir) {
  const uint64_t size = o.load_mib * kMiB;
  const uint64_t first_page = size / kPage * 3 / 4;
  const ScratchFile image = WriteRandomImage(dir.Sub("load.img"), size, 13);
  std::vector<uint64_t> offsets = SampleDistinct(size / kPage - first_page, o.load_touches, 44);
  for (uint64_t& offset : offsets) offset = (first_page + offset) * kPage;
  const Mapping::Options random = {.advice = MADV_RANDOM};

  auto server = StartServer(image.path());
  Latency idle;
  {
    auto mount = StartMount(dir, *server, {});
    idle = Summarize(TouchEach(Mapping(mount->File(kRegion), random), offsets));
  }
  const nlohmann::json loaded = TouchDuringPull(dir, *server, offsets, std::nullopt);
  const nlohmann::json full_speed = TouchDuringPull(dir, *server, offsets, 0);
  return {{"image_mib", o.load_mib},
          {"touches", offsets.size()},
          {"idle", idle.Json()},
          {"loaded", loaded},
          {"loaded_no_yield", full_speed},
          {"loaded_over_idle_p50", Ratio(Num(loaded, "p50_us"), idle.p50)},
          {"loaded_over_idle_p99", Ratio(Num(loaded, "p99_us"), idle.p99)}};
}

void PrintLoadCase(const nlohmann::json& r) {
  PrintSection(absl::StrFormat(
      "3. first touch of a 4 KiB page under a full-speed pull: %d random pages in the last "
      "quarter of a %d MiB random image",
      r.at("touches").get<int>(), r.at("image_mib").get<int>()));
  PrintLatencyHeader();
  PrintLatencyRow(
      "while the pull runs (--prefetch on)", r.at("loaded"),
      absl::StrFormat("%.2fx idle p99 (target p99 <= 200 µs)", Num(r, "loaded_over_idle_p99")));
  PrintLatencyRow("  the same, --pull-yield 0", r.at("loaded_no_yield"));
  PrintLatencyRow("idle (--prefetch off)", r.at("idle"));
  for (const char* row : {"loaded", "loaded_no_yield"}) {
    const nlohmann::json& x = r.at(row);
    PrintLine(absl::StrFormat(
        "%s: touches that found the page local: %d (in page cache: %d); pull %.0f%% -> %.0f%% "
        "while touching%s",
        std::string(row) == "loaded" ? "default" : "--pull-yield 0",
        x.at("already_local").get<int>(), x.at("in_page_cache").get<int>(),
        100 * Num(x, "pull_progress_before"), 100 * Num(x, "pull_progress_after"),
        x.at("pull_outlasted_touches").get<bool>() ? "" : " (the pull finished first!)"));
  }
}

}  // namespace lazyram::bench
