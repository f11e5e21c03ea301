#include "tools/bench/daemons.h"

#include "absl/time/time.h"
#include "tools/bench/bench_util.h"

namespace lazyram::bench {
namespace {

// Long enough for the largest full-run pull on a slow machine.
constexpr absl::Duration kPullTimeout = absl::Minutes(15);

void MustCtl(const testing::MountProcess& mount, const std::vector<std::string>& args) {
  const testing::RunResult r = mount.Ctl(args, kPullTimeout);
  if (r.exit_code != 0) Fail("lazyramctl " + args.front() + " failed: " + r.err);
}

}  // namespace

std::unique_ptr<testing::PageServerProcess> StartServer(const std::string& image) {
  return Must(testing::PageServerProcess::Start({std::string(kRegion) + "=" + image}),
              "starting the page server");
}

std::unique_ptr<testing::MountProcess> StartMount(const testing::TempDir& dir,
                                                  const testing::PageServerProcess& server,
                                                  const MountSpec& spec) {
  testing::MountProcess::Options options{.source = server.url(),
                                         .store = spec.store,
                                         .prefetch = spec.prefetch,
                                         .passthrough = spec.passthrough};
  if (spec.pull_yield_ms.has_value()) {
    options.extra_args = {"--pull-yield", std::to_string(*spec.pull_yield_ms)};
  }
  if (!spec.push) {
    options.extra_args.push_back("--push");
    options.extra_args.push_back("off");
  }
  return Must(testing::MountProcess::Start(dir, options), "mounting");
}

void WaitComplete(const testing::MountProcess& mount) { MustCtl(mount, {"wait"}); }

void WaitPushed(const testing::MountProcess& mount) {
  for (;;) {
    const nlohmann::json status = Must(mount.Status(), "status");
    if (!status.contains("push") || !status.at("push").at("enabled").get<bool>()) return;
    if (status.at("push").at("pending_runs").get<uint64_t>() == 0) return;
    absl::SleepFor(absl::Milliseconds(5));
  }
}

void WaitNoOpenFiles(const testing::MountProcess& mount) {
  WaitPushed(mount);
  for (;;) {
    const nlohmann::json open = RegionStatus(mount).at("open_files");
    if (open.at("cached").get<uint64_t>() == 0 && open.at("passthrough").get<uint64_t>() == 0) {
      return;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
}

bool Passthrough(const testing::MountProcess& mount) {
  return RegionStatus(mount).at("passthrough").get<bool>();
}

void PrefetchAll(const testing::MountProcess& mount) { MustCtl(mount, {"prefetch", kRegion}); }

nlohmann::json RegionStatus(const testing::MountProcess& mount) {
  return Must(mount.RegionStatus(kRegion), "status");
}

double LocalFraction(const nlohmann::json& region) {
  const double local =
      region.at("pages_present").get<double>() + region.at("pages_zero").get<double>();
  return Ratio(local, region.at("pages_total").get<double>());
}

pid_t DaemonPid(const testing::MountProcess& mount) {
  const nlohmann::json status = Must(mount.Status(), "status");
  if (!status.contains("pid")) Fail("status has no pid");
  return status.at("pid").get<pid_t>();
}

}  // namespace lazyram::bench
