// A page server that dies, comes back, misbehaves or changes: reads of
// absent pages wait while the daemon reconnects, never fail and never come
// back short; a daemon never crashes on what a server sends; a complete
// mount no longer needs its source.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <random>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "daemon/protocol/protocol.h"
#include "gtest/gtest.h"
#include "tests/fault_helpers.h"
#include "tests/test_env.h"

namespace lazyram::testing {
namespace {

namespace proto = ::lazyram::protocol;

constexpr uint64_t kMiB = 1 << 20;

// --- Helpers ---------------------------------------------------------------

// Polls the status until `source` is `state` or `timeout` passes; returns
// the last state seen.
std::string WaitForSource(const MountProcess& mount, const std::string& state,
                          absl::Duration timeout = absl::Seconds(60)) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last;
  for (;;) {
    absl::StatusOr<nlohmann::json> status = mount.Status();
    if (status.ok()) last = (*status)["source"].get<std::string>();
    if (last == state || absl::Now() >= deadline) return last;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

size_t CountOccurrences(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// --- A page server that misbehaves on purpose --------------------------------

// Speaks the page protocol from an in-memory image of one region, "mem0",
// on 127.0.0.1 (any port), one thread per connection. Its first
// `bad_replies` READs (over all connections) get `fault` instead of a good
// reply; every later READ is answered correctly.
class FakePageServer {
 public:
  enum class Fault { kOversizedFrame, kBadChecksum, kWrongFirstPage, kGarbage };

  FakePageServer(std::vector<uint8_t> image, Fault fault, int bad_replies)
      : image_(std::move(image)), fault_(fault), bad_left_(bad_replies) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (listen_fd_ < 0 || bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        listen(listen_fd_, 16) != 0 ||
        getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      std::abort();
    }
    port_ = ntohs(addr.sin_port);
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }

  ~FakePageServer() {
    stop_.store(true);
    accept_thread_.join();
    std::vector<std::thread> threads;
    {
      absl::MutexLock lock(&mu_);
      for (int fd : fds_) shutdown(fd, SHUT_RDWR);
      threads.swap(threads_);
    }
    for (std::thread& t : threads) t.join();
    for (int fd : fds_) close(fd);
    close(listen_fd_);
  }

  std::string url() const { return absl::StrCat("tcp://127.0.0.1:", port_); }
  // From now on every READ gets a good reply.
  void Heal() { bad_left_.store(0); }
  int connections() const { return connections_.load(); }
  int bad_replies_sent() const { return bad_sent_.load(); }
  int good_replies_sent() const { return good_sent_.load(); }

 private:
  void AcceptLoop() {
    while (!stop_.load()) {
      pollfd pfd{listen_fd_, POLLIN, 0};
      if (poll(&pfd, 1, 50) <= 0) continue;
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      ++connections_;
      absl::MutexLock lock(&mu_);
      fds_.push_back(fd);
      threads_.emplace_back([this, fd] { Serve(fd); });
    }
  }

  // Reads exactly `len` bytes; false on EOF, error or shutdown.
  bool ReadFull(int fd, uint8_t* out, size_t len) {
    size_t done = 0;
    while (done < len) {
      if (stop_.load()) return false;
      pollfd pfd{fd, POLLIN, 0};
      if (poll(&pfd, 1, 50) <= 0) continue;
      ssize_t n = recv(fd, out + done, len - done, 0);
      if (n <= 0) return false;
      done += static_cast<size_t>(n);
    }
    return true;
  }

  bool WriteAll(int fd, const std::string& bytes) {
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      if (n <= 0) return false;
      done += static_cast<size_t>(n);
    }
    return true;
  }

  // The bytes of `count` pages from `first_page`, zero past the image.
  std::vector<uint8_t> Pages(uint64_t first_page, uint32_t count) const {
    std::vector<uint8_t> pages(uint64_t{count} * proto::kPageSize, 0);
    const uint64_t begin = first_page * proto::kPageSize;
    if (begin < image_.size()) {
      const uint64_t n = std::min<uint64_t>(pages.size(), image_.size() - begin);
      std::memcpy(pages.data(), image_.data() + begin, n);
    }
    return pages;
  }

  std::string Reply(uint64_t tag, const proto::ReadRequest& read) {
    std::string out;
    const uint64_t region_pages = (image_.size() + proto::kPageSize - 1) / proto::kPageSize;
    if (read.region != 0 || read.first_page + read.count > region_pages) {
      proto::AppendError(tag, {proto::ErrorCode::kOutOfRange, "no such pages"}, &out);
      return out;
    }
    if (bad_left_.fetch_sub(1) <= 0) {
      ++good_sent_;
      proto::AppendPages(tag, 0, read.first_page, read.count, Pages(read.first_page, read.count),
                         &out);
      return out;
    }
    ++bad_sent_;
    switch (fault_) {
      case Fault::kOversizedFrame: {
        uint8_t header[proto::kHeaderSize];
        proto::EncodeHeader({proto::kMaxFrameBody + 1, proto::FrameType::kPages, 0, tag}, header);
        out.assign(reinterpret_cast<const char*>(header), sizeof header);
        out.append(4096, '\x42');  // the start of a body the client must not wait for
        break;
      }
      case Fault::kBadChecksum:
        // The image has no zero pages, so the last byte is payload.
        proto::AppendPages(tag, 0, read.first_page, read.count, Pages(read.first_page, read.count),
                           &out);
        out.back() ^= 0x5a;
        break;
      case Fault::kWrongFirstPage:
        proto::AppendPages(tag, 0, read.first_page + 1, read.count,
                           Pages(read.first_page + 1, read.count), &out);
        break;
      case Fault::kGarbage:
        out = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        break;
    }
    return out;
  }

  void Serve(int fd) {
    for (;;) {
      uint8_t header_bytes[proto::kHeaderSize];
      if (!ReadFull(fd, header_bytes, sizeof header_bytes)) break;
      absl::StatusOr<proto::FrameHeader> header =
          proto::DecodeHeader(header_bytes, proto::kMaxFrameBody);
      if (!header.ok()) break;
      std::vector<uint8_t> body(header->body_len);
      if (!ReadFull(fd, body.data(), body.size())) break;
      std::string out;
      if (header->type == proto::FrameType::kHello) {
        if (!proto::DecodeHello(body).ok()) break;
        proto::Welcome welcome;
        welcome.regions.push_back({"mem0", image_.size(), {}});
        proto::AppendWelcome(welcome, &out);
      } else if (header->type == proto::FrameType::kRead) {
        absl::StatusOr<proto::ReadRequest> read = proto::DecodeRead(body);
        if (!read.ok()) break;
        out = Reply(header->tag, *read);
      } else {
        break;
      }
      if (!WriteAll(fd, out)) break;
    }
    shutdown(fd, SHUT_RDWR);
  }

  const std::vector<uint8_t> image_;
  const Fault fault_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> bad_left_;
  std::atomic<int> connections_{0}, bad_sent_{0}, good_sent_{0};
  absl::Mutex mu_;
  std::vector<int> fds_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
  std::thread accept_thread_;  // last: started once the members above exist
};

// --- The source goes away and comes back -------------------------------------

TEST(SourceFaults, ReadsWaitForARestartedSource) {
  constexpr uint64_t kSize = 16 * kMiB;
  TempDir dir;
  std::vector<uint8_t> image = WriteImage(dir.Sub("img"), kSize, 21);
  const std::vector<std::string> regions = {"mem0=" + dir.Sub("img")};
  auto server = PageServerProcess::Start(regions);
  ASSERT_TRUE(server.ok()) << server.status();
  const uint16_t port = (*server)->port();
  auto mount = MountProcess::Start(dir, {.source = (*server)->url()});
  ASSERT_TRUE(mount.ok()) << mount.status();
  MountProcess& m = **mount;
  const std::string file = m.File("mem0");

  ASSERT_EQ(RunInChild([&] { return PreadAndCompare(file, 0, kMiB, image); }), 0);
  EXPECT_EQ(WaitForSource(m, "connected"), "connected");

  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    (*server)->Kill();
    ASSERT_EQ(WaitForSource(m, "reconnecting"), "reconnecting") << m.log();

    // Pages nobody has read yet, from a MiB that holds data.
    const uint64_t offset = (5 + 4 * static_cast<uint64_t>(round)) * kMiB + 12345;
    const uint64_t length = kMiB + 777;
    auto reader = ChildProcess::Start([&] { return PreadAndCompare(file, offset, length, image); });
    absl::SleepFor(absl::Seconds(1));  // long enough for a read that would fail to fail
    ASSERT_TRUE(StillRunning(*reader)) << "a read finished while the source was down";

    server = PageServerProcess::Start(regions, port);
    ASSERT_TRUE(server.ok()) << server.status();
    EXPECT_EQ(reader->Wait(absl::Seconds(60)), 0) << m.log();
    EXPECT_EQ(WaitForSource(m, "connected"), "connected") << m.log();
  }
  EXPECT_EQ(RunInChild([&] { return MapAndCompare(file, image); }), 0);
  EXPECT_EQ(m.Unmount(), 0) << m.log();
}

TEST(SourceFaults, FullPullSurvivesRepeatedRestarts) {
  constexpr uint64_t kSize = 64 * kMiB;
  TempDir dir;
  std::vector<uint8_t> image = WriteImage(dir.Sub("img"), kSize, 22);
  const std::vector<std::string> regions = {"mem0=" + dir.Sub("img")};
  auto server = PageServerProcess::Start(regions);
  ASSERT_TRUE(server.ok()) << server.status();
  const uint16_t port = (*server)->port();
  Throttle throttle(absl::Milliseconds(2), absl::Milliseconds(50));
  throttle.Add((*server)->pid());
  auto mount = MountProcess::Start(dir, {.source = (*server)->url(), .prefetch = true});
  ASSERT_TRUE(mount.ok()) << mount.status();
  MountProcess& m = **mount;
  const std::string file = m.File("mem0");
  const uint64_t total = kSize / proto::kPageSize;

  // A consumer that maps the file and touches pages all over it, then all
  // of it, while the source comes and goes: a failed fetch would be a
  // SIGBUS, a short one a mismatch.
  auto consumer = ChildProcess::Start([&] {
    int fd = open(file.c_str(), O_RDONLY);
    if (fd < 0) return static_cast<int>(kOpen);
    auto* p = static_cast<const uint8_t*>(mmap(nullptr, kSize, PROT_READ, MAP_SHARED, fd, 0));
    if (p == MAP_FAILED) return static_cast<int>(kMap);
    std::mt19937_64 rng(5);
    for (int i = 0; i < 64; ++i) {
      const uint64_t at = rng() % total * proto::kPageSize;
      if (std::memcmp(p + at, image.data() + at, proto::kPageSize) != 0) {
        return static_cast<int>(kMismatch);
      }
    }
    return std::memcmp(p, image.data(), kSize) == 0 ? 0 : static_cast<int>(kMismatch);
  });

  uint64_t local = LocalPages(m, "mem0");
  for (int cycle = 0; cycle < 3; ++cycle) {
    SCOPED_TRACE(absl::StrCat("cycle ", cycle));
    // Kill only once this server has delivered something (2 MiB).
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (LocalPages(m, "mem0") < local + 512 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(10));
    }
    // Freeze the server, so the pull cannot finish between this check and
    // the kill.
    throttle.Clear();
    kill((*server)->pid(), SIGSTOP);
    local = LocalPages(m, "mem0");
    ASSERT_LT(local, total) << "the pull finished before kill " << cycle
                            << "; the throttle did not hold it back";
    (*server)->Kill();
    ASSERT_EQ(WaitForSource(m, "reconnecting"), "reconnecting") << m.log();

    server = PageServerProcess::Start(regions, port);
    ASSERT_TRUE(server.ok()) << server.status();
    throttle.Add((*server)->pid());
  }
  throttle.Clear();

  RunResult wait = m.Ctl({"wait", "--timeout", "120"}, absl::Seconds(180));
  EXPECT_EQ(wait.exit_code, 0) << wait.err << m.log();
  EXPECT_EQ(consumer->Wait(absl::Seconds(120)), 0) << m.log();
  EXPECT_EQ(WaitForSource(m, "detached"), "detached") << m.log();
  auto status = m.RegionStatus("mem0");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE((*status)["complete"]);
  EXPECT_EQ(RunInChild([&] { return PreadAndCompare(file, 0, kSize, image); }), 0);
  EXPECT_EQ(RunInChild([&] { return MapAndCompare(file, image); }), 0);
  EXPECT_EQ(m.Unmount(), 0) << m.log();
}

TEST(SourceFaults, CompleteMountOutlivesItsSource) {
  constexpr uint64_t kSize = 16 * kMiB;
  TempDir dir;
  std::vector<uint8_t> image = WriteImage(dir.Sub("img"), kSize, 23, 4, 2 * kMiB);
  auto server = PageServerProcess::Start({"mem0=" + dir.Sub("img")});
  ASSERT_TRUE(server.ok()) << server.status();
  auto mount = MountProcess::Start(dir, {.source = (*server)->url(), .prefetch = true});
  ASSERT_TRUE(mount.ok()) << mount.status();
  MountProcess& m = **mount;
  const std::string file = m.File("mem0");

  RunResult wait = m.Ctl({"wait", "--timeout", "120"}, absl::Seconds(180));
  ASSERT_EQ(wait.exit_code, 0) << wait.err << m.log();
  ASSERT_EQ(WaitForSource(m, "detached"), "detached") << m.log();
  (*server)->Kill();

  EXPECT_EQ(RunInChild([&] { return PreadAndCompare(file, 0, kSize, image); }), 0);
  ASSERT_TRUE(DropCaches()) << "cannot write /proc/sys/vm/drop_caches";
  EXPECT_EQ(RunInChild([&] { return MapAndCompare(file, image); }), 0);
  ASSERT_TRUE(DropCaches());
  EXPECT_EQ(RunInChild([&] { return PreadAndCompare(file, 0, kSize, image); }), 0);
  EXPECT_EQ(WaitForSource(m, "detached"), "detached");
  EXPECT_EQ(m.Unmount(), 0) << m.log();
}

TEST(SourceFaults, ServerWithDifferentRegionsIsRefused) {
  constexpr uint64_t kSize = 8 * kMiB;
  TempDir dir;
  std::vector<uint8_t> image = WriteImage(dir.Sub("img"), kSize, 24);
  WriteImage(dir.Sub("other"), kSize, 25);
  WriteImage(dir.Sub("bigger"), 2 * kSize, 26);
  const std::vector<std::string> regions = {"mem0=" + dir.Sub("img")};
  auto server = PageServerProcess::Start(regions);
  ASSERT_TRUE(server.ok()) << server.status();
  const uint16_t port = (*server)->port();
  auto mount = MountProcess::Start(dir, {.source = (*server)->url()});
  ASSERT_TRUE(mount.ok()) << mount.status();
  MountProcess& m = **mount;
  const std::string file = m.File("mem0");

  (*server)->Kill();
  ASSERT_EQ(WaitForSource(m, "reconnecting"), "reconnecting") << m.log();
  auto reader = ChildProcess::Start([&] { return PreadAndCompare(file, kMiB, 3 * kMiB, image); });

  // Another name, then the same name with another size: neither is the
  // image this mount started with.
  const std::vector<std::vector<std::string>> impostors = {{"pc.ram=" + dir.Sub("other")},
                                                           {"mem0=" + dir.Sub("bigger")}};
  for (const std::vector<std::string>& impostor : impostors) {
    SCOPED_TRACE(impostor.front());
    const size_t refusals_before = CountOccurrences(m.log(), "different regions");
    server = PageServerProcess::Start(impostor, port);
    ASSERT_TRUE(server.ok()) << server.status();
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (CountOccurrences(m.log(), "different regions") <= refusals_before &&
           absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    EXPECT_GT(CountOccurrences(m.log(), "different regions"), refusals_before)
        << "no log line says the regions differ:\n"
        << m.log();
    EXPECT_TRUE(StillRunning(*reader)) << "the read finished against the wrong server";
    EXPECT_EQ(WaitForSource(m, "reconnecting", absl::ZeroDuration()), "reconnecting");
    (*server)->Stop();
  }

  server = PageServerProcess::Start(regions, port);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(reader->Wait(absl::Seconds(60)), 0) << m.log();
  EXPECT_EQ(WaitForSource(m, "connected"), "connected") << m.log();
  EXPECT_EQ(RunInChild([&] { return MapAndCompare(file, image); }), 0);
  EXPECT_EQ(m.Unmount(), 0) << m.log();
}

// --- A server that breaks the protocol ---------------------------------------

// A server that answers every READ badly until it is fixed: reads wait (they
// neither fail nor spin the daemon in a reconnect loop) and complete once
// it answers well.
TEST(SourceFaults, PersistentlyBadServerIsRetriedWithBackoff) {
  constexpr uint64_t kSize = 4 * kMiB;
  TempDir dir;
  std::vector<uint8_t> image = WriteImage(dir.Sub("img"), kSize, 32, /*zero_every=*/0);
  FakePageServer fake(image, FakePageServer::Fault::kBadChecksum, 1 << 30);
  auto mount = MountProcess::Start(dir, {.source = fake.url()});
  ASSERT_TRUE(mount.ok()) << mount.status();
  MountProcess& m = **mount;
  const std::string file = m.File("mem0");
  ASSERT_EQ(WaitForSource(m, "connected"), "connected") << m.log();

  auto reader = ChildProcess::Start([&] { return PreadAndCompare(file, 0, kMiB, image); });
  absl::SleepFor(absl::Seconds(3));
  EXPECT_TRUE(StillRunning(*reader)) << "a read finished against a server that only lies";
  const int bad = fake.bad_replies_sent();
  const size_t errors = CountOccurrences(m.log(), "] error: ");
  // With a backoff that starts at tens of milliseconds this is a handful;
  // without one, thousands.
  EXPECT_GE(bad, 1);
  EXPECT_LT(bad, 100) << "the daemon retries a bad server in a tight loop; " << fake.connections()
                      << " connections";
  EXPECT_LT(errors, 100u) << "the log is flooded";

  fake.Heal();
  EXPECT_EQ(reader->Wait(absl::Seconds(60)), 0) << m.log();
  EXPECT_GE((*m.Status())["checksum_errors"].get<uint64_t>(), 1u);
  EXPECT_EQ(RunInChild([&] { return MapAndCompare(file, image); }), 0);
  EXPECT_EQ(m.Unmount(), 0) << m.log();
}

// What the daemon's error line must say for each fault.
std::string Symptom(FakePageServer::Fault fault) {
  switch (fault) {
    case FakePageServer::Fault::kOversizedFrame:
      return "exceeds the limit";
    case FakePageServer::Fault::kBadChecksum:
      return "checksum";
    case FakePageServer::Fault::kWrongFirstPage:
      return "does not match";
    case FakePageServer::Fault::kGarbage:
      return "unknown frame type";
  }
  return "?";
}

// True when a line of `log` has severity "error" and mentions `symptom`.
bool HasErrorLine(const std::string& log, const std::string& symptom) {
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (absl::StrContains(line, "] error: ") && absl::StrContains(line, symptom)) return true;
  }
  return false;
}

class HostileServerTest : public ::testing::TestWithParam<FakePageServer::Fault> {};

TEST_P(HostileServerTest, DaemonLogsReconnectsAndReadsCorrectBytes) {
  constexpr uint64_t kSize = 4 * kMiB;
  TempDir dir;
  // No zero page anywhere: every reply carries payload.
  std::vector<uint8_t> image = WriteImage(dir.Sub("img"), kSize, 31, /*zero_every=*/0);
  FakePageServer fake(image, GetParam(), /*bad_replies=*/1);
  auto mount = MountProcess::Start(dir, {.source = fake.url()});
  ASSERT_TRUE(mount.ok()) << mount.status();
  MountProcess& m = **mount;
  const std::string file = m.File("mem0");
  ASSERT_EQ(WaitForSource(m, "connected"), "connected") << m.log();
  const int connections_before = fake.connections();

  auto reader = ChildProcess::Start([&] { return PreadAndCompare(file, kMiB, kMiB, image); });
  EXPECT_EQ(reader->Wait(absl::Seconds(60)), 0) << m.log();
  EXPECT_EQ(fake.bad_replies_sent(), 1);
  EXPECT_GE(fake.good_replies_sent(), 1);
  EXPECT_GT(fake.connections(), connections_before) << "the daemon did not reconnect";

  // Alive, still answering, and it said what went wrong.
  int wstatus = 0;
  EXPECT_EQ(waitpid(m.pid(), &wstatus, WNOHANG), 0) << "lazyramd exited:\n" << m.log();
  EXPECT_EQ(WaitForSource(m, "connected"), "connected") << m.log();
  EXPECT_TRUE(HasErrorLine(m.log(), Symptom(GetParam())))
      << "no error line saying '" << Symptom(GetParam()) << "' in the log:\n"
      << m.log();
  if (GetParam() == FakePageServer::Fault::kBadChecksum) {
    auto status = m.Status();
    ASSERT_TRUE(status.ok()) << status.status();
    EXPECT_GE((*status)["checksum_errors"].get<uint64_t>(), 1u);
  }
  EXPECT_EQ(RunInChild([&] { return MapAndCompare(file, image); }), 0) << m.log();
  EXPECT_EQ(m.Unmount(), 0) << m.log();
}

INSTANTIATE_TEST_SUITE_P(Faults, HostileServerTest,
                         ::testing::Values(FakePageServer::Fault::kOversizedFrame,
                                           FakePageServer::Fault::kBadChecksum,
                                           FakePageServer::Fault::kWrongFirstPage,
                                           FakePageServer::Fault::kGarbage),
                         [](const ::testing::TestParamInfo<FakePageServer::Fault>& info) {
                           switch (info.param) {
                             case FakePageServer::Fault::kOversizedFrame:
                               return "OversizedFrame";
                             case FakePageServer::Fault::kBadChecksum:
                               return "BadChecksum";
                             case FakePageServer::Fault::kWrongFirstPage:
                               return "WrongFirstPage";
                             case FakePageServer::Fault::kGarbage:
                               return "Garbage";
                           }
                           return "Unknown";
                         });

}  // namespace
}  // namespace lazyram::testing
