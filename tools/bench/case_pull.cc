// Case 4: full-pull throughput. A random image (no zero pages) pulled by a
// --prefetch on mount, timed from the mount command to "complete" in its
// status, against raw loopback TCP (one connection, send/recv of the same
// number of bytes, measured here) and against reading the image file
// locally (from the page cache, where the page server reads it too). The
// pull runs twice, with the page pusher on (the default) and off, and each
// reports the CPU-seconds per pulled GiB of the page server and of the
// daemon (its threads and its warm helper) from mount to complete.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "tools/bench/bench.h"
#include "tools/bench/bench_util.h"
#include "tools/bench/daemons.h"
#include "tools/bench/images.h"
#include "tools/bench/process_cpu.h"

namespace lazyram::bench {
namespace {

// Sends `bytes` over a loopback TCP connection; the receiver's MB/s.
double RawTcpMBps(uint64_t bytes) {
  const int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener < 0) FailErrno("socket");
  const absl::Cleanup close_listener = [listener] { close(listener); };
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      listen(listener, 1) != 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    FailErrno("loopback listen");
  }
  std::atomic<bool> send_failed{false};
  std::thread sender([&] {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      send_failed = true;
      shutdown(listener, SHUT_RDWR);  // wakes accept()
    }
    std::vector<char> buf(kMiB, 'x');
    for (uint64_t sent = 0; !send_failed && sent < bytes;) {
      const ssize_t n = send(fd, buf.data(), std::min<uint64_t>(buf.size(), bytes - sent), 0);
      if (n <= 0) send_failed = true;
      sent += static_cast<uint64_t>(std::max<ssize_t>(n, 0));
    }
    close(fd);
  });
  const int fd = accept(listener, nullptr, nullptr);
  std::vector<char> buf(kMiB);
  const Stopwatch watch;
  uint64_t got = 0;
  for (ssize_t n; fd >= 0 && (n = recv(fd, buf.data(), buf.size(), 0)) > 0;) {
    got += static_cast<uint64_t>(n);
  }
  const double seconds = watch.Seconds();
  sender.join();
  if (fd >= 0) close(fd);
  if (send_failed || got != bytes) Fail("loopback TCP transfer failed");
  return static_cast<double>(got) / 1e6 / seconds;
}

}  // namespace

namespace {

// One pull of `image` (size bytes) by a fresh server and mount.
nlohmann::json Pull(const testing::TempDir& dir, const std::string& image, uint64_t size,
                    bool push) {
  auto server = StartServer(image);
  const double server_cpu0 = ProcessTreeCpuSeconds(server->pid());
  const Stopwatch watch;
  auto mount = StartMount(dir, *server, {.prefetch = true, .push = push});
  const double mount_ms = watch.Millis();
  const pid_t daemon = DaemonPid(*mount);
  nlohmann::json region;
  for (;;) {
    region = RegionStatus(*mount);
    if (region.at("complete").get<bool>()) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  const double seconds = watch.Seconds();
  // The daemon's CPU counts from its start (its set-up is part of a pull).
  const double daemon_cpu = ProcessTreeCpuSeconds(daemon);
  const double server_cpu = ProcessTreeCpuSeconds(server->pid()) - server_cpu0;
  const double gib = static_cast<double>(size) / kGiB;
  return {{"mount_ms", mount_ms},
          {"pull_s", seconds},
          {"pull_MBps", static_cast<double>(size) / 1e6 / seconds},
          {"bytes_fetched", region.at("bytes_fetched").get<uint64_t>()},
          {"server_cpu_s_per_gib", server_cpu / gib},
          {"daemon_cpu_s_per_gib", daemon_cpu / gib}};
}

}  // namespace

nlohmann::json RunPullCase(const Options& o, const testing::TempDir& dir) {
  const uint64_t size = o.pull_mib * kMiB;
  const ScratchFile image = WriteRandomImage(dir.Sub("pull.img"), size, 9);
  const double tcp = RawTcpMBps(size);
  const double local = ReadWholeFile(image.path());
  nlohmann::json push_on = Pull(dir, image.path(), size, /*push=*/true);
  nlohmann::json push_off = Pull(dir, image.path(), size, /*push=*/false);
  const double pull = Num(push_on, "pull_MBps");
  push_off["pull_over_tcp"] = Ratio(Num(push_off, "pull_MBps"), tcp);
  return {{"image_mib", o.pull_mib},
          {"mount_ms", push_on.at("mount_ms")},
          {"pull_s", push_on.at("pull_s")},
          {"pull_MBps", pull},
          {"bytes_fetched", push_on.at("bytes_fetched")},
          {"server_cpu_s_per_gib", push_on.at("server_cpu_s_per_gib")},
          {"daemon_cpu_s_per_gib", push_on.at("daemon_cpu_s_per_gib")},
          {"push_off", push_off},
          {"raw_tcp_MBps", tcp},
          {"local_read_MBps", local},
          {"pull_over_tcp", Ratio(pull, tcp)}};
}

void PrintPullCase(const nlohmann::json& r) {
  PrintSection(absl::StrFormat("4. full pull of a %d MiB random image (MB/s)",
                               r.at("image_mib").get<int>()));
  PrintLine(absl::StrFormat(
      "%-44s %10.0f  %.0f%% of raw TCP (target >= 60%%); %.1f s, mount took %.0f ms",
      "lazyram pull (mount to complete)", Num(r, "pull_MBps"), 100 * Num(r, "pull_over_tcp"),
      Num(r, "pull_s"), Num(r, "mount_ms")));
  const nlohmann::json& off = r.at("push_off");
  PrintLine(absl::StrFormat("%-44s %10.0f  %.0f%% of raw TCP; %.1f s", "  the same, --push off",
                            Num(off, "pull_MBps"), 100 * Num(off, "pull_over_tcp"),
                            Num(off, "pull_s")));
  PrintLine(absl::StrFormat(
      "%-44s %10.2f  server %.2f + daemon %.2f (target <= 0.8); --push off: %.2f + %.2f",
      "CPU-seconds per pulled GiB", Num(r, "server_cpu_s_per_gib") + Num(r, "daemon_cpu_s_per_gib"),
      Num(r, "server_cpu_s_per_gib"), Num(r, "daemon_cpu_s_per_gib"),
      Num(off, "server_cpu_s_per_gib"), Num(off, "daemon_cpu_s_per_gib")));
  PrintLine(absl::StrFormat("%-44s %10.0f", "raw loopback TCP", Num(r, "raw_tcp_MBps")));
  PrintLine(
      absl::StrFormat("%-44s %10.0f", "local file read (page cache)", Num(r, "local_read_MBps")));
}

}  // namespace lazyram::bench
