// Memory figures: the host's (/proc/meminfo), one process's
// (/proc/PID/status), and the page cache a file holds (mincore).
#ifndef LAZYRAM_TOOLS_BENCH_HOST_MEMORY_H_
#define LAZYRAM_TOOLS_BENCH_HOST_MEMORY_H_

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace lazyram::bench {

// One snapshot of /proc/meminfo, in bytes.
struct HostMemory {
  uint64_t total = 0, free = 0, available = 0, cached = 0, shmem = 0;

  static HostMemory Read();
  // Everything not free, page cache included: pages cached twice cost here.
  uint64_t Used() const { return total - free; }
  // What the kernel could not hand back without swapping: page cache the
  // kernel estimates it can drop does not count.
  uint64_t Unreclaimable() const { return total - available; }
};

// One snapshot of /proc/PID/status, in bytes.
struct ProcessMemory {
  uint64_t rss = 0, rss_anon = 0, rss_file = 0, rss_shmem = 0;

  // Fails the case when the process is gone.
  static ProcessMemory Read(pid_t pid);
};

// Bytes of `path` resident in memory (page cache, or tmpfs/memfd pages):
// mincore() over a read-only mapping, which reads nothing in.
uint64_t ResidentBytes(const std::string& path);
// ResidentBytes summed over the distinct regular files `pid` has open
// (through /proc/PID/fd, so a memfd counts too).
uint64_t OpenFilesResidentBytes(pid_t pid);

}  // namespace lazyram::bench

#endif  // LAZYRAM_TOOLS_BENCH_HOST_MEMORY_H_
