// lazyram-bench: measures lazyram against its baselines in one run, on one
// machine, and prints one table (or --json).
//
// Cases:
//   fault  first touches of 4 KiB pages through mmap with MADV_RANDOM:
//          absent pages (page server on 127.0.0.1, --prefetch off), pages
//          already local in the store (the FUSE floor), and a tmpfs file.
//   pull   full-pull throughput of a random image (--prefetch on, from the
//          mount command to "complete") against raw loopback TCP (send/recv
//          of the same bytes) and reading the image file locally.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/control_client.h"
#include "tests/test_env.h"

namespace lazyram::bench {
namespace {

using testing::MountProcess;
using testing::PageServerProcess;
using testing::TempDir;

struct Options {
  uint64_t fault_mib = 256;
  int touches = 2000;
  uint64_t pull_mib = 1024;
  std::string cases = "fault,pull";
  bool json = false;
};

struct Latency {
  double p50 = 0, p99 = 0, max = 0;
  nlohmann::json Json() const { return {{"p50_us", p50}, {"p99_us", p99}, {"max_us", max}}; }
};

Latency Summarize(std::vector<double> us) {
  std::sort(us.begin(), us.end());
  auto at = [&](double q) {
    return us[std::min(us.size() - 1, static_cast<size_t>(q * us.size()))];
  };
  return {at(0.50), at(0.99), us.back()};
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "lazyram-bench: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T Must(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) Die(absl::StrFormat("%s: %s", what, v.status().ToString()));
  return *std::move(v);
}

// Touches `pages` (indexes) of `path` once each through a MAP_SHARED,
// MADV_RANDOM mapping and returns each first-touch time in microseconds.
std::vector<double> TouchPages(const std::string& path, uint64_t size,
                               const std::vector<uint64_t>& pages) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) Die("open " + path);
  auto* p = static_cast<volatile uint8_t*>(mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0));
  if (p == MAP_FAILED) Die("mmap " + path);
  madvise(const_cast<uint8_t*>(p), size, MADV_RANDOM);
  std::vector<double> us;
  us.reserve(pages.size());
  for (uint64_t page : pages) {
    const absl::Time t0 = absl::Now();
    (void)p[page * 4096];
    us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
  }
  munmap(const_cast<uint8_t*>(p), size);
  close(fd);
  return us;
}

nlohmann::json FaultCase(const Options& o, const TempDir& dir) {
  const uint64_t size = o.fault_mib << 20;
  const std::string image = dir.Sub("fault.img");
  testing::WriteImage(image, size, 7, /*zero_every=*/0);
  std::vector<uint64_t> pages(size / 4096);
  for (uint64_t i = 0; i < pages.size(); ++i) pages[i] = i;
  std::shuffle(pages.begin(), pages.end(), std::mt19937_64(42));
  pages.resize(std::min<size_t>(pages.size(), static_cast<size_t>(o.touches)));

  auto server = Must(PageServerProcess::Start({"mem0=" + image}), "page server");
  auto absent = Must(MountProcess::Start(dir, {.source = server->url()}), "mount");
  Latency absent_lat = Summarize(TouchPages(absent->File("mem0"), size, pages));

  auto local = Must(MountProcess::Start(dir, {.source = server->url()}), "mount");
  if (local->Ctl({"prefetch", "mem0"}, absl::Minutes(10)).exit_code != 0) Die("prefetch failed");
  Latency local_lat = Summarize(TouchPages(local->File("mem0"), size, pages));

  const std::string shm = "/dev/shm/" + std::filesystem::path(dir.path()).filename().string();
  std::filesystem::copy_file(image, shm);
  Latency tmpfs_lat = Summarize(TouchPages(shm, size, pages));
  std::filesystem::remove(shm);

  return {{"image_mib", o.fault_mib},    {"touches", pages.size()},
          {"absent", absent_lat.Json()}, {"local", local_lat.Json()},
          {"tmpfs", tmpfs_lat.Json()},   {"absent_over_local_p50", absent_lat.p50 / local_lat.p50}};
}

// Sends `bytes` over a loopback TCP connection and returns MB/s.
double RawTcpMBps(uint64_t bytes) {
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(lfd, 1) != 0 ||
      getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    Die("loopback listen");
  }
  std::thread sender([&] {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) Die("connect");
    std::vector<char> buf(1 << 20, 'x');
    for (uint64_t sent = 0; sent < bytes;) {
      ssize_t n = send(fd, buf.data(), std::min<uint64_t>(buf.size(), bytes - sent), 0);
      if (n <= 0) Die("send");
      sent += static_cast<uint64_t>(n);
    }
    close(fd);
  });
  int cfd = accept(lfd, nullptr, nullptr);
  std::vector<char> buf(1 << 20);
  const absl::Time t0 = absl::Now();
  uint64_t got = 0;
  for (ssize_t n; (n = recv(cfd, buf.data(), buf.size(), 0)) > 0;) got += static_cast<uint64_t>(n);
  const double secs = absl::ToDoubleSeconds(absl::Now() - t0);
  sender.join();
  close(cfd);
  close(lfd);
  return static_cast<double>(got) / 1e6 / secs;
}

double LocalReadMBps(const std::string& path, uint64_t bytes) {
  int fd = open(path.c_str(), O_RDONLY);
  std::vector<char> buf(1 << 20);
  const absl::Time t0 = absl::Now();
  uint64_t got = 0;
  for (ssize_t n; (n = pread(fd, buf.data(), buf.size(), static_cast<off_t>(got))) > 0;) {
    got += static_cast<uint64_t>(n);
  }
  const double secs = absl::ToDoubleSeconds(absl::Now() - t0);
  close(fd);
  if (got != bytes) Die("short read of " + path);
  return static_cast<double>(got) / 1e6 / secs;
}

nlohmann::json PullCase(const Options& o, const TempDir& dir) {
  const uint64_t size = o.pull_mib << 20;
  const std::string image = dir.Sub("pull.img");
  testing::WriteImage(image, size, 9, /*zero_every=*/0);
  const double tcp = RawTcpMBps(size);
  const double local = LocalReadMBps(image, size);

  auto server = Must(PageServerProcess::Start({"mem0=" + image}), "page server");
  const absl::Time t0 = absl::Now();
  auto mount = Must(MountProcess::Start(dir, {.source = server->url(), .prefetch = true}), "mount");
  const absl::Time mounted = absl::Now();
  for (;;) {
    auto status = Must(mount->Status(), "status");
    if (status["complete"].get<bool>()) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  const double secs = absl::ToDoubleSeconds(absl::Now() - t0);
  const double pull = static_cast<double>(size) / 1e6 / secs;
  return {{"image_mib", o.pull_mib},  {"mount_ms", absl::ToDoubleMilliseconds(mounted - t0)},
          {"pull_MBps", pull},        {"raw_tcp_MBps", tcp},
          {"local_read_MBps", local}, {"pull_over_tcp", pull / tcp}};
}

void PrintTable(const nlohmann::json& r) {
  std::printf("lazyram-bench  cores=%u\n", std::thread::hardware_concurrency());
  if (r.contains("fault")) {
    const auto& f = r["fault"];
    std::printf("\nfirst touch of a 4 KiB page, MADV_RANDOM, %d touches on a %d MiB image (µs)\n",
                f["touches"].get<int>(), f["image_mib"].get<int>());
    std::printf("  %-28s %10s %10s %10s\n", "", "p50", "p99", "max");
    for (const char* k : {"absent", "local", "tmpfs"}) {
      const char* label = std::string(k) == "absent"  ? "absent (page server, lo)"
                          : std::string(k) == "local" ? "local in store (FUSE floor)"
                                                      : "tmpfs";
      std::printf("  %-28s %10.1f %10.1f %10.1f\n", label, f[k]["p50_us"].get<double>(),
                  f[k]["p99_us"].get<double>(), f[k]["max_us"].get<double>());
    }
    std::printf("  absent p50 / local p50: %.2fx\n", f["absent_over_local_p50"].get<double>());
  }
  if (r.contains("pull")) {
    const auto& p = r["pull"];
    std::printf("\nfull pull of a %d MiB random image (MB/s)\n", p["image_mib"].get<int>());
    std::printf("  %-28s %10.0f   (%.0f%% of raw TCP; mount took %.0f ms)\n", "lazyram pull",
                p["pull_MBps"].get<double>(), 100 * p["pull_over_tcp"].get<double>(),
                p["mount_ms"].get<double>());
    std::printf("  %-28s %10.0f\n", "raw loopback TCP", p["raw_tcp_MBps"].get<double>());
    std::printf("  %-28s %10.0f\n", "local file read", p["local_read_MBps"].get<double>());
  }
}

}  // namespace
}  // namespace lazyram::bench

int main(int argc, char** argv) {
  using namespace lazyram::bench;
  Options o;
  CLI::App app{"lazyram-bench: lazyram against its baselines, side by side in one run"};
  app.add_option("--fault-mib", o.fault_mib, "Image size for the fault case")
      ->capture_default_str();
  app.add_option("--touches", o.touches, "Pages touched per fault variant")->capture_default_str();
  app.add_option("--pull-mib", o.pull_mib, "Image size for the pull case")->capture_default_str();
  app.add_option("--cases", o.cases, "Comma-separated: fault,pull")->capture_default_str();
  app.add_flag("--json", o.json, "Print one JSON object instead of the table");
  CLI11_PARSE(app, argc, argv);

  // The binaries under test sit beside this one in the build tree unless
  // LAZYRAMD / LAZYRAMCTL say otherwise.
  const auto build =
      std::filesystem::canonical("/proc/self/exe").parent_path().parent_path().parent_path();
  setenv("LAZYRAMD", (build / "daemon/cmd/lazyramd").c_str(), 0);
  setenv("LAZYRAMCTL", (build / "client/lazyramctl").c_str(), 0);

  lazyram::testing::TempDir dir;
  nlohmann::json result = {{"cores", std::thread::hardware_concurrency()}};
  if (o.cases.find("fault") != std::string::npos) result["fault"] = FaultCase(o, dir);
  if (o.cases.find("pull") != std::string::npos) result["pull"] = PullCase(o, dir);
  if (o.json) {
    std::printf("%s\n", result.dump(2).c_str());
  } else {
    PrintTable(result);
  }
  return 0;
}
