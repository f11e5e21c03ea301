// Case 6: memory after a full pull, for --store mem and --store DIR (a
// directory on a disk-backed filesystem, never tmpfs).
//
// Per store: start the page server (the source host's cost, not counted),
// read the image once so that its page cache is in the baseline, snapshot
// /proc/meminfo, mount with --prefetch on, `lazyramctl wait`, measure.
//
// "Accounted" is what this mount holds, counted piece by piece so that
// other work on the host cannot move it: the daemon's anonymous RSS, plus
// the resident pages of every regular file the daemon has open (its memfd
// store, or the page cache of its store file: pages cached twice count
// twice), plus the page cache of the mounted region file (what the kernel
// was served or was pushed). mincore() measures the last two. Beside it,
// the host-wide deltas since the snapshot: MemTotal - MemFree (page cache
// counts as used) and MemTotal - MemAvailable (cache the kernel could drop
// does not) — exact on a quiet host, noise on a busy one. The daemon's
// VmRSS comes from /proc/<pid>/status, its pid from the mount's status.
#include <cstdio>

#include "absl/strings/str_format.h"
#include "tools/bench/bench.h"
#include "tools/bench/bench_util.h"
#include "tools/bench/daemons.h"
#include "tools/bench/host_memory.h"
#include "tools/bench/images.h"

namespace lazyram::bench {
namespace {

double MiB(double bytes) { return bytes / static_cast<double>(kMiB); }

double Delta(uint64_t after, uint64_t before) {
  return static_cast<double>(after) - static_cast<double>(before);
}

nlohmann::json MeasureStore(const testing::TempDir& dir, const std::string& image, uint64_t size,
                            const std::string& store) {
  auto server = StartServer(image);
  ReadWholeFile(image);
  const HostMemory before = HostMemory::Read();
  const Stopwatch watch;
  // Cached mode: the region file's page cache is measured through a
  // mapping of it, and a passthrough mapping would show the memfd store
  // (counted already) instead.
  auto mount = StartMount(dir, *server, {.prefetch = true, .store = store, .passthrough = false});
  WaitComplete(*mount);
  const double pull_s = watch.Seconds();
  const HostMemory after = HostMemory::Read();
  const pid_t pid = DaemonPid(*mount);
  const ProcessMemory daemon = ProcessMemory::Read(pid);
  const uint64_t store_bytes = OpenFilesResidentBytes(pid);
  const uint64_t fuse_cache = ResidentBytes(mount->File(kRegion));
  const double accounted = static_cast<double>(daemon.rss_anon + store_bytes + fuse_cache);

  const double gib = static_cast<double>(size) / static_cast<double>(kGiB);
  const double used = Delta(after.Used(), before.Used());
  return {
      {"daemon_rss_mib", MiB(daemon.rss)},
      {"daemon_rss_mib_per_gib", MiB(daemon.rss) / gib},
      {"daemon_rss_anon_mib", MiB(daemon.rss_anon)},
      {"daemon_rss_shmem_mib", MiB(daemon.rss_shmem)},
      {"store_resident_mib", MiB(store_bytes)},
      {"fuse_page_cache_mib", MiB(fuse_cache)},
      {"accounted_mib", MiB(accounted)},
      {"accounted_mib_per_gib", MiB(accounted) / gib},
      {"accounted_over_region", accounted / static_cast<double>(size)},
      {"host_used_delta_mib", MiB(used)},
      {"host_used_delta_over_region", used / static_cast<double>(size)},
      {"host_unreclaimable_delta_mib", MiB(Delta(after.Unreclaimable(), before.Unreclaimable()))},
      {"cached_delta_mib", MiB(Delta(after.cached, before.cached))},
      {"shmem_delta_mib", MiB(Delta(after.shmem, before.shmem))},
      {"pull_s", pull_s}};
}

}  // namespace

nlohmann::json RunMemoryCase(const Options& o, const testing::TempDir& dir) {
  const uint64_t size = o.memory_mib * kMiB;
  const ScratchFile image = WriteRandomImage(dir.Sub("memory.img"), size, 19);
  nlohmann::json r = {{"region_mib", o.memory_mib}};
  r["mem"] = MeasureStore(dir, image.path(), size, "mem");
  const DiskDir store(o.store_dir.empty() ? dir.path() : o.store_dir);
  r["dir"] = MeasureStore(dir, image.path(), size, store.path());
  r["store_dir"] = store.path();
  r["store_fs"] = FilesystemType(store.path());
  return r;
}

void PrintMemoryCase(const nlohmann::json& r) {
  PrintSection(absl::StrFormat(
      "6. memory after a full pull of a %d MiB random region (MiB; accounted = daemon RssAnon + "
      "its open files' resident pages + the region's FUSE page cache)",
      r.at("region_mib").get<int>()));
  std::printf("  %-20s %8s %8s %8s %8s %9s %8s %8s %9s %9s\n", "", "RSS", "RSS/GiB", "store",
              "FUSE pc", "accounted", "acct/GiB", "/region", "host used", "unreclaim");
  for (const char* v : {"mem", "dir"}) {
    const nlohmann::json& x = r.at(v);
    std::printf("  %-20s %8.0f %8.0f %8.0f %8.0f %9.0f %8.0f %7.2fx %9.0f %9.0f\n",
                std::string(v) == "mem" ? "--store mem" : "--store DIR (disk)",
                Num(x, "daemon_rss_mib"), Num(x, "daemon_rss_mib_per_gib"),
                Num(x, "store_resident_mib"), Num(x, "fuse_page_cache_mib"),
                Num(x, "accounted_mib"), Num(x, "accounted_mib_per_gib"),
                Num(x, "accounted_over_region"), Num(x, "host_used_delta_mib"),
                Num(x, "host_unreclaimable_delta_mib"));
  }
  PrintLine(absl::StrFormat(
      "host used / unreclaim: MemTotal-MemFree / MemTotal-MemAvailable growth (noisy on a busy "
      "host); DIR store in %s (%s)",
      r.at("store_dir").get<std::string>(), r.at("store_fs").get<std::string>()));
  PrintLine("target: --store DIR host memory <= 1.1x region");
}

}  // namespace lazyram::bench
