// The lazyram side of a case: a page server for one image (region "mem0")
// on 127.0.0.1, mounts fed by it, and what the cases ask those mounts —
// all through the test harness (tests/test_env.h), which tears every mount
// and server down by pid when its owner goes out of scope.
#ifndef LAZYRAM_TOOLS_BENCH_DAEMONS_H_
#define LAZYRAM_TOOLS_BENCH_DAEMONS_H_

#include <sys/types.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "tests/test_env.h"

namespace lazyram::bench {

inline constexpr char kRegion[] = "mem0";

std::unique_ptr<testing::PageServerProcess> StartServer(const std::string& image);

struct MountSpec {
  bool prefetch = false;      // --prefetch on: the background pull runs
  std::string store = "mem";  // --store mem or a directory
  // --passthrough on: a file opened once its region is complete maps the
  // store directly; off keeps every file on the cached FUSE path.
  bool passthrough = true;
  // --pull-yield MS; unset: the daemon's default.
  std::optional<double> pull_yield_ms;
  // --push off: pulled pages are not pushed into the page cache.
  bool push = true;
};
std::unique_ptr<testing::MountProcess> StartMount(const testing::TempDir& dir,
                                                  const testing::PageServerProcess& server,
                                                  const MountSpec& spec);

// `lazyramctl wait`: returns once every page is local (needs --prefetch on).
void WaitComplete(const testing::MountProcess& mount);
// Waits until the page pusher has nothing queued (returns at once when
// pushing is off).
void WaitPushed(const testing::MountProcess& mount);
// After WaitComplete: waits until the pusher is idle and no file of mem0 is
// open any more (the pusher's helper lets go of its files when idle), so
// that the next open may go passthrough.
void WaitNoOpenFiles(const testing::MountProcess& mount);
// Whether mem0's files open in passthrough mode now (its status).
bool Passthrough(const testing::MountProcess& mount);
// `lazyramctl prefetch mem0`: fetches the whole region at demand priority.
void PrefetchAll(const testing::MountProcess& mount);

// mem0's entry of the mount's status.
nlohmann::json RegionStatus(const testing::MountProcess& mount);
// The share of mem0's pages that are local (present or known zero), 0..1.
double LocalFraction(const nlohmann::json& region_status);
// The daemon's pid, as the mount's status reports it.
pid_t DaemonPid(const testing::MountProcess& mount);

}  // namespace lazyram::bench

#endif  // LAZYRAM_TOOLS_BENCH_DAEMONS_H_
