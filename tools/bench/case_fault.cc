// Case 1: absent-page fault latency. First touches of random 4 KiB pages
// through a MAP_SHARED, MADV_RANDOM mapping (so each touch is one 4 KiB
// READ): on a mount fed by a page server on 127.0.0.1 with --prefetch off
// (absent), on a mount whose pages were all fetched first with `lazyramctl
// prefetch` and --passthrough off (local in the store, each touch still a
// FUSE READ: the FUSE floor), on the same with passthrough (the default: the
// file, opened after the region completed, maps the store itself), and on a
// tmpfs copy.
#include <sys/mman.h>

#include "absl/strings/str_format.h"
#include "tools/bench/bench.h"
#include "tools/bench/bench_util.h"
#include "tools/bench/daemons.h"
#include "tools/bench/images.h"
#include "tools/bench/mapping.h"

namespace lazyram::bench {

nlohmann::json RunFaultCase(const Options& o, const testing::TempDir& dir) {
  const uint64_t size = o.fault_mib * kMiB;
  const ScratchFile image = WriteRandomImage(dir.Sub("fault.img"), size, 7);
  std::vector<uint64_t> offsets = SampleDistinct(size / kPage, o.fault_touches, 42);
  for (uint64_t& offset : offsets) offset *= kPage;
  const Mapping::Options random = {.advice = MADV_RANDOM};

  auto server = StartServer(image.path());
  Latency absent, local, passthrough, tmpfs;
  {
    auto mount = StartMount(dir, *server, {});
    absent = Summarize(TouchEach(Mapping(mount->File(kRegion), random), offsets));
  }
  {
    auto mount = StartMount(dir, *server, {.passthrough = false});
    PrefetchAll(*mount);
    local = Summarize(TouchEach(Mapping(mount->File(kRegion), random), offsets));
  }
  {
    auto mount = StartMount(dir, *server, {});
    PrefetchAll(*mount);
    const Mapping mapping(mount->File(kRegion), random);
    if (!Passthrough(*mount)) Fail("case 1: the complete region did not open in passthrough mode");
    passthrough = Summarize(TouchEach(mapping, offsets));
  }
  {
    const ScratchFile copy = TmpfsCopy(image.path());
    tmpfs = Summarize(TouchEach(Mapping(copy.path(), random), offsets));
  }
  return {{"image_mib", o.fault_mib},
          {"touches", offsets.size()},
          {"absent", absent.Json()},
          {"local", local.Json()},
          {"local_passthrough", passthrough.Json()},
          {"tmpfs", tmpfs.Json()},
          {"absent_over_local_p50", Ratio(absent.p50, local.p50)},
          {"local_over_tmpfs_p50", Ratio(local.p50, tmpfs.p50)},
          {"local_passthrough_over_tmpfs_p50", Ratio(passthrough.p50, tmpfs.p50)}};
}

void PrintFaultCase(const nlohmann::json& r) {
  PrintSection(absl::StrFormat(
      "1. first touch of a 4 KiB page, MADV_RANDOM: %d random pages of a %d MiB random image",
      r.at("touches").get<int>(), r.at("image_mib").get<int>()));
  PrintLatencyHeader();
  PrintLatencyRow(
      "absent (page server on lo, --prefetch off)", r.at("absent"),
      absl::StrFormat("%.2fx local p50 (target <= 2x)", Num(r, "absent_over_local_p50")));
  PrintLatencyRow("local, --passthrough off (FUSE floor)", r.at("local"),
                  absl::StrFormat("%.2fx tmpfs p50", Num(r, "local_over_tmpfs_p50")));
  PrintLatencyRow("local, passthrough (store mapped)", r.at("local_passthrough"),
                  absl::StrFormat("%.2fx tmpfs p50", Num(r, "local_passthrough_over_tmpfs_p50")));
  PrintLatencyRow("tmpfs", r.at("tmpfs"));
}

}  // namespace lazyram::bench
