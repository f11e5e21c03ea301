// Case 2: QEMU-like faults. QEMU maps each RAMBlock MAP_SHARED and madvises
// it MADV_HUGEPAGE, so a guest's first touch of a 2 MiB block makes the
// kernel READ the whole aligned block (docs/kernel-facts.md#fuse). Each
// touch reads the first byte of a distinct random 2 MiB-aligned block,
// timed alone:
//   absent     a mount with --prefetch off: the block comes over the network;
//   pulled     a mount with --prefetch on after `lazyramctl wait`: what a
//              guest sees once the background pull is done (fast once the
//              puller pushes its pages into the page cache); the file is
//              mapped before the pull completes, as QEMU's is, so it stays
//              on the cached path (--passthrough off makes sure of it);
//   prefetched a --prefetch off, --passthrough off mount after `lazyramctl
//              prefetch`: every page local in the store, each block still a
//              FUSE READ — the floor without page-cache pushes;
//   passthrough the same, with passthrough (the default): the file, opened
//              once the region is complete, maps the memfd store itself;
//   tmpfs      a copy of the image on /dev/shm.
#include <sys/mman.h>

#include <map>

#include "absl/strings/str_format.h"
#include "tools/bench/bench.h"
#include "tools/bench/bench_util.h"
#include "tools/bench/daemons.h"
#include "tools/bench/images.h"
#include "tools/bench/mapping.h"

namespace lazyram::bench {
namespace {

constexpr const char* kVariants[] = {"absent", "pulled", "prefetched", "passthrough", "tmpfs"};

nlohmann::json OverTmpfs(const Latency& l, const Latency& tmpfs) {
  return {{"p50", Ratio(l.p50, tmpfs.p50)},
          {"p99", Ratio(l.p99, tmpfs.p99)},
          {"max", Ratio(l.max, tmpfs.max)}};
}

}  // namespace

nlohmann::json RunHugeCase(const Options& o, const testing::TempDir& dir) {
  const uint64_t size = o.huge_mib * kMiB;
  if (size < kHugePage) Fail("--huge-mib must be at least 2");
  const ScratchFile image = WriteRandomImage(dir.Sub("huge.img"), size, 11);
  std::vector<uint64_t> offsets = SampleDistinct(size / kHugePage, o.huge_blocks, 43);
  for (uint64_t& offset : offsets) offset *= kHugePage;
  const Mapping::Options huge = {.advice = MADV_HUGEPAGE};
  auto touch = [&](const std::string& path) {
    return Summarize(TouchEach(Mapping(path, huge), offsets));
  };

  auto server = StartServer(image.path());
  std::map<std::string, Latency> l;
  {
    auto mount = StartMount(dir, *server, {});
    l["absent"] = touch(mount->File(kRegion));
  }
  {
    // As QEMU does: the file is open and mapped while the pull runs.
    auto mount = StartMount(dir, *server, {.prefetch = true, .passthrough = false});
    Mapping mapping(mount->File(kRegion), huge);
    WaitComplete(*mount);
    WaitPushed(*mount);
    l["pulled"] = Summarize(TouchEach(mapping, offsets));
  }
  {
    auto mount = StartMount(dir, *server, {.passthrough = false});
    PrefetchAll(*mount);
    l["prefetched"] = touch(mount->File(kRegion));
  }
  {
    auto mount = StartMount(dir, *server, {});
    PrefetchAll(*mount);
    const Mapping mapping(mount->File(kRegion), huge);
    if (!Passthrough(*mount)) Fail("case 2: the complete region did not open in passthrough mode");
    l["passthrough"] = Summarize(TouchEach(mapping, offsets));
  }
  {
    const ScratchFile copy = TmpfsCopy(image.path());
    l["tmpfs"] = touch(copy.path());
  }

  nlohmann::json r = {{"image_mib", o.huge_mib},
                      {"blocks_touched", offsets.size()},
                      {"blocks_total", size / kHugePage},
                      {"tmpfs_huge_pages", ShmemHugePages()}};
  for (const char* v : kVariants) {
    r[v] = l[v].Json();
    r["over_tmpfs"][v] = OverTmpfs(l[v], l["tmpfs"]);
  }
  return r;
}

void PrintHugeCase(const nlohmann::json& r) {
  PrintSection(absl::StrFormat(
      "2. QEMU-like first touch, MADV_HUGEPAGE: %d of the %d 2 MiB blocks of a %d MiB random "
      "image (tmpfs huge pages: %s)",
      r.at("blocks_touched").get<int>(), r.at("blocks_total").get<int>(),
      r.at("image_mib").get<int>(), r.at("tmpfs_huge_pages").get<std::string>()));
  PrintLatencyHeader();
  const std::map<std::string, std::string> labels = {
      {"absent", "absent (--prefetch off)"},
      {"pulled", "all local: --prefetch on, after wait"},
      {"prefetched", "all local: prefetch cmd (FUSE READ floor)"},
      {"passthrough", "all local: prefetch cmd, passthrough"},
      {"tmpfs", "tmpfs"}};
  for (const char* v : kVariants) {
    const nlohmann::json& x = r.at("over_tmpfs").at(v);
    PrintLatencyRow(labels.at(v), r.at(v),
                    std::string(v) == "tmpfs"
                        ? ""
                        : absl::StrFormat("x tmpfs: p50 %.1f  p99 %.1f  max %.1f", Num(x, "p50"),
                                          Num(x, "p99"), Num(x, "max")));
  }
  PrintLine("target: all local <= 3x tmpfs");
}

}  // namespace lazyram::bench
