// Security of the page transport and the mount: authentication with a
// shared key (right key, wrong key, a key on one side only, bad key files),
// the loopback-only rule for servers without a key, the server's limits
// (connections, requests in flight, handshake timeout) and who may see a
// mount. Real page servers and mounts; raw TCP clients where the test must
// see the frames themselves.
#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "daemon/protocol/auth_key.h"
#include "daemon/protocol/protocol.h"
#include "gtest/gtest.h"
#include "tests/test_env.h"

namespace lazyram::testing {
namespace {

constexpr uint64_t kMiB = 1 << 20;
// Names the region so tests can check that it never reaches a client that
// has not proved the key.
constexpr char kRegion[] = "secret-region-name";

// The contract for a refused command: non-zero exit, exactly one stderr
// line that mentions each of `mentions`.
void ExpectOneErrorLine(const RunResult& r, const std::vector<std::string>& mentions) {
  EXPECT_NE(r.exit_code, -1) << "timed out or crashed; stderr: " << r.err;
  EXPECT_NE(r.exit_code, 0) << "stderr: " << r.err;
  ASSERT_FALSE(r.err.empty()) << "no error message";
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "stderr: '" << r.err << "'";
  for (const std::string& m : mentions) {
    EXPECT_TRUE(absl::StrContains(r.err, m)) << "stderr does not mention '" << m << "': " << r.err;
  }
}

// Number of lines of `text` that contain `needle`.
int LinesWith(const std::string& text, const std::string& needle) {
  int n = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) n += absl::StrContains(line, needle);
  return n;
}

// The first IPv4 address of an up interface that is not loopback, or "".
std::string NonLoopbackIPv4() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "";
  std::string found;
  for (ifaddrs* a = list; a != nullptr && found.empty(); a = a->ifa_next) {
    if (a->ifa_addr == nullptr || a->ifa_addr->sa_family != AF_INET) continue;
    if ((a->ifa_flags & IFF_UP) == 0 || (a->ifa_flags & IFF_LOOPBACK) != 0) continue;
    const in_addr ip = reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr;
    if ((ntohl(ip.s_addr) >> 24) == 127) continue;
    char buf[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &ip, buf, sizeof buf);
    found = buf;
  }
  freeifaddrs(list);
  return found;
}

// Peak resident memory of a process, in bytes (VmHWM), or 0.
uint64_t PeakRss(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (!absl::StartsWith(line, "VmHWM:")) continue;
    uint64_t kib = 0;
    std::string number = line.substr(6);
    number.erase(std::remove_if(number.begin(), number.end(), [](char c) { return !isdigit(c); }),
                 number.end());
    if (absl::SimpleAtoi(number, &kib)) return kib * 1024;
  }
  return 0;
}

// A raw TCP connection to a page server, for tests that look at frames.
class RawConnection {
 public:
  struct Frame {
    protocol::FrameHeader header;
    std::vector<uint8_t> body;
  };

  explicit RawConnection(uint16_t port, const std::string& host = "127.0.0.1") {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    inet_pton(AF_INET, host.c_str(), &addr.sin_addr);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~RawConnection() { close(fd_); }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  bool connected() const { return connected_; }

  bool Send(const std::string& bytes) {
    return send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }

  // The next frame: kUnavailable when the server closed the connection,
  // kDeadlineExceeded when nothing came in time.
  absl::StatusOr<Frame> Read(absl::Duration timeout = absl::Seconds(30)) {
    const absl::Time deadline = absl::Now() + timeout;
    uint8_t header_bytes[protocol::kHeaderSize];
    if (absl::Status s = ReadFull(header_bytes, sizeof header_bytes, deadline); !s.ok()) return s;
    absl::StatusOr<protocol::FrameHeader> header =
        protocol::DecodeHeader(header_bytes, protocol::kMaxHandshakeBody);
    if (!header.ok()) return header.status();
    Frame frame{*header, std::vector<uint8_t>(header->body_len)};
    if (absl::Status s = ReadFull(frame.body.data(), frame.body.size(), deadline); !s.ok()) {
      return s;
    }
    return frame;
  }

  // True once the server has closed the connection (EOF or reset) within
  // `timeout`; any frame read meanwhile is dropped.
  bool WaitClosed(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      absl::StatusOr<Frame> frame = Read(deadline - absl::Now());
      if (absl::IsUnavailable(frame.status())) return true;
      if (!frame.ok()) return false;
    }
  }

  // HELLO and WELCOME without a key.
  absl::StatusOr<protocol::Welcome> Handshake() {
    std::string hello;
    protocol::AppendHello({}, &hello);
    if (!Send(hello)) return absl::UnavailableError("send");
    absl::StatusOr<Frame> frame = Read();
    if (!frame.ok()) return frame.status();
    if (frame->header.type != protocol::FrameType::kWelcome) {
      return absl::InternalError(
          absl::StrCat("expected WELCOME, got type ", static_cast<int>(frame->header.type)));
    }
    return protocol::DecodeWelcome(frame->body);
  }

  // HELLO asking to authenticate, CHALLENGE, AUTH with `key`, AUTH_OK
  // (checked against `key`) and WELCOME.
  absl::StatusOr<protocol::Welcome> HandshakeWithKey(const AuthKey& key) {
    std::string hello;
    protocol::AppendHello({.features = protocol::kFeatureAuth}, &hello);
    if (!Send(hello)) return absl::UnavailableError("send");
    absl::StatusOr<Frame> frame = Read();
    if (!frame.ok()) return frame.status();
    absl::StatusOr<protocol::Challenge> challenge = protocol::DecodeChallenge(frame->body);
    if (frame->header.type != protocol::FrameType::kChallenge || !challenge.ok()) {
      return absl::InternalError("expected CHALLENGE");
    }
    absl::StatusOr<protocol::Nonce> client_nonce = RandomNonce();
    if (!client_nonce.ok()) return client_nonce.status();
    absl::StatusOr<protocol::Proof> proof =
        key.Prove(AuthKey::Role::kClient, challenge->server_nonce, *client_nonce);
    if (!proof.ok()) return proof.status();
    std::string auth;
    protocol::AppendAuth({*client_nonce, *proof}, &auth);
    if (!Send(auth)) return absl::UnavailableError("send");
    frame = Read();
    if (!frame.ok()) return frame.status();
    absl::StatusOr<protocol::AuthOk> ok = protocol::DecodeAuthOk(frame->body);
    if (frame->header.type != protocol::FrameType::kAuthOk || !ok.ok()) {
      return absl::InternalError("expected AUTH_OK");
    }
    if (!key.Verify(AuthKey::Role::kServer, challenge->server_nonce, *client_nonce, ok->proof)) {
      return absl::UnauthenticatedError("the server's proof is wrong");
    }
    frame = Read();
    if (!frame.ok()) return frame.status();
    if (frame->header.type != protocol::FrameType::kWelcome) {
      return absl::InternalError("expected WELCOME");
    }
    return protocol::DecodeWelcome(frame->body);
  }

  // One READ of `count` pages from page `first` of region 0, answered with
  // a valid PAGES.
  absl::Status ReadPages(uint64_t tag, uint64_t first, uint32_t count) {
    std::string read;
    protocol::AppendRead(tag, {.region = 0, .count = count, .first_page = first}, &read);
    if (!Send(read)) return absl::UnavailableError("send");
    absl::StatusOr<Frame> frame = Read();
    if (!frame.ok()) return frame.status();
    return CheckPages(*frame, tag, first, count);
  }

  static absl::Status CheckPages(const Frame& frame, uint64_t tag, uint64_t first, uint32_t count) {
    if (frame.header.type != protocol::FrameType::kPages || frame.header.tag != tag) {
      return absl::InternalError(absl::StrCat("expected PAGES with tag ", tag, ", got type ",
                                              static_cast<int>(frame.header.type), " tag ",
                                              frame.header.tag));
    }
    absl::StatusOr<protocol::PagesView> pages = protocol::DecodePages(frame.body);
    if (!pages.ok()) return pages.status();
    if (pages->first_page != first || pages->count != count) {
      return absl::InternalError("PAGES for other pages");
    }
    return absl::OkStatus();
  }

 private:
  absl::Status ReadFull(uint8_t* out, size_t len, absl::Time deadline) {
    size_t done = 0;
    while (done < len) {
      pollfd pfd{fd_, POLLIN, 0};
      const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
      if (left <= 0 || poll(&pfd, 1, static_cast<int>(left)) == 0) {
        return absl::DeadlineExceededError("no frame in time");
      }
      ssize_t n = recv(fd_, out + done, len - done, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return absl::UnavailableError("the server closed the connection");
      done += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  int fd_ = -1;
  bool connected_ = false;
};

// 0 when `path` holds exactly `image`; run in a child (a hung mount must
// not hang the test).
int ReadsBack(const std::string& path, const std::vector<uint8_t>& image) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return 10;
  std::vector<uint8_t> buf(kMiB);
  for (uint64_t off = 0; off < image.size(); off += buf.size()) {
    const size_t want = std::min<uint64_t>(buf.size(), image.size() - off);
    if (pread(fd, buf.data(), want, static_cast<off_t>(off)) != static_cast<ssize_t>(want)) {
      close(fd);
      return 11;
    }
    if (std::memcmp(buf.data(), image.data() + off, want) != 0) {
      close(fd);
      return 12;
    }
  }
  close(fd);
  return 0;
}

class SecurityTest : public ::testing::Test {
 protected:
  SecurityTest() {
    image_ = WriteImage(image_path_, 8 * kMiB, 11);
    key_ = WriteKey("key", "correct horse battery staple 0123456789\n");
    other_key_ = WriteKey("other-key", "a different secret, also long enough\n");
    std::filesystem::create_directories(mountpoint_);
  }

  std::string WriteKey(const std::string& name, const std::string& content, mode_t mode = 0600) {
    const std::string path = dir_.Sub(name);
    std::ofstream(path, std::ios::binary) << content;
    chmod(path.c_str(), mode);
    return path;
  }

  std::vector<std::string> Regions() const { return {std::string(kRegion) + "=" + image_path_}; }

  // A page server on 127.0.0.1 with `extra` flags; its stderr in a log.
  std::unique_ptr<PageServerProcess> Serve(const std::vector<std::string>& extra,
                                           uint16_t port = 0) {
    PageServerProcess::Options options;
    options.port = port;
    options.extra_args = extra;
    options.log_path = dir_.Sub("serve.log");
    absl::StatusOr<std::unique_ptr<PageServerProcess>> server =
        PageServerProcess::Start(Regions(), options);
    EXPECT_TRUE(server.ok()) << server.status();
    return server.ok() ? *std::move(server) : nullptr;
  }

  RunResult Lazyramd(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {LazyramdPath()};
    argv.insert(argv.end(), args.begin(), args.end());
    return lazyram::testing::Run(argv, absl::Seconds(60));
  }

  // `lazyramd mount` in the background (or the foreground) that must fail:
  // afterwards nothing is mounted.
  RunResult FailingMount(const std::string& url, const std::vector<std::string>& extra,
                         bool foreground = false) {
    std::vector<std::string> args = {"mount", mountpoint_, "--source",
                                     url,     "--control", dir_.Sub("ctl.sock")};
    if (foreground) args.push_back("--foreground");
    args.insert(args.end(), extra.begin(), extra.end());
    RunResult r = Lazyramd(args);
    EXPECT_FALSE(IsMounted(mountpoint_));
    ForceUnmount(mountpoint_);
    return r;
  }

  TempDir dir_;
  const std::string image_path_ = dir_.Sub("image");
  const std::string mountpoint_ = dir_.Sub("mnt");
  std::vector<uint8_t> image_;
  std::string key_, other_key_;
};

// --- Authentication: outcomes --------------------------------------------------

TEST_F(SecurityTest, RightKeyOnBothSidesServesEveryByte) {
  std::unique_ptr<PageServerProcess> server = Serve({"--auth-key-file", key_});
  ASSERT_NE(server, nullptr);
  MountProcess::Options options;
  options.source = server->url();
  options.extra_args = {"--auth-key-file", key_};
  absl::StatusOr<std::unique_ptr<MountProcess>> mount = MountProcess::Start(dir_, options);
  ASSERT_TRUE(mount.ok()) << mount.status();
  EXPECT_EQ(RunInChild([&] { return ReadsBack((*mount)->File(kRegion), image_); }), 0)
      << (*mount)->log();
  // Neither side ever writes the key anywhere.
  EXPECT_FALSE(absl::StrContains((*mount)->log(), "correct horse"));
  EXPECT_FALSE(absl::StrContains(server->log(), "correct horse"));
  EXPECT_EQ((*mount)->Unmount(), 0);
}

TEST_F(SecurityTest, WrongKeyFailsAtStartUpAndTheServerLogsIt) {
  std::unique_ptr<PageServerProcess> server = Serve({"--auth-key-file", key_});
  ASSERT_NE(server, nullptr);
  for (bool foreground : {false, true}) {
    SCOPED_TRACE(foreground ? "foreground" : "background");
    RunResult r = FailingMount(server->url(), {"--auth-key-file", other_key_}, foreground);
    ExpectOneErrorLine(r, {"authentication failed", absl::StrCat(server->port())});
    EXPECT_FALSE(absl::StrContains(r.err, kRegion));
  }
  EXPECT_GE(LinesWith(server->log(), "authentication failed"), 1) << server->log();
  EXPECT_FALSE(absl::StrContains(server->log(), "a different secret"));
}

TEST_F(SecurityTest, ClientWithoutKeyIsToldTheServerRequiresOne) {
  std::unique_ptr<PageServerProcess> server = Serve({"--auth-key-file", key_});
  ASSERT_NE(server, nullptr);
  RunResult r = FailingMount(server->url(), {});
  ExpectOneErrorLine(r, {"page server requires authentication (--auth-key-file)"});
  EXPECT_FALSE(absl::StrContains(r.err, kRegion));
}

TEST_F(SecurityTest, ClientWithKeyRefusesAServerWithoutOne) {
  std::unique_ptr<PageServerProcess> server = Serve({});
  ASSERT_NE(server, nullptr);
  ExpectOneErrorLine(FailingMount(server->url(), {"--auth-key-file", key_}),
                     {"does not authenticate", "--auth-key-file"});
}

// The frames themselves: nothing about the regions before the key is
// proved, whatever a client sends.
TEST_F(SecurityTest, NoRegionTableBeforeTheKeyIsProved) {
  std::unique_ptr<PageServerProcess> server = Serve({"--auth-key-file", key_});
  ASSERT_NE(server, nullptr);
  auto expect_refused = [&](RawConnection& c, protocol::ErrorCode code) {
    absl::StatusOr<RawConnection::Frame> frame = c.Read();
    ASSERT_TRUE(frame.ok()) << frame.status();
    ASSERT_EQ(frame->header.type, protocol::FrameType::kError);
    absl::StatusOr<protocol::ErrorReply> error = protocol::DecodeError(frame->body);
    ASSERT_TRUE(error.ok());
    EXPECT_EQ(error->code, code) << error->message;
    EXPECT_FALSE(absl::StrContains(error->message, kRegion));
    EXPECT_TRUE(c.WaitClosed(absl::Seconds(30)));
  };
  {  // HELLO without the feature bit
    RawConnection c(server->port());
    std::string hello;
    protocol::AppendHello({}, &hello);
    ASSERT_TRUE(c.Send(hello));
    expect_refused(c, protocol::ErrorCode::kAuthRequired);
  }
  {  // a READ instead of HELLO
    RawConnection c(server->port());
    std::string read;
    protocol::AppendRead(1, {.region = 0, .count = 1}, &read);
    ASSERT_TRUE(c.Send(read));
    expect_refused(c, protocol::ErrorCode::kBadRequest);
  }
  // HELLO asking to authenticate, then AUTH with a proof made with the
  // wrong key, with the right key but for the server's role (what a
  // reflected proof would be), or a READ instead.
  std::shared_ptr<const AuthKey> wrong = *AuthKey::FromSecret("a different secret, also long");
  std::shared_ptr<const AuthKey> right =
      *AuthKey::FromSecret("correct horse battery staple 0123456789");
  for (int variant = 0; variant < 3; ++variant) {
    SCOPED_TRACE(variant);
    RawConnection c(server->port());
    std::string hello;
    protocol::AppendHello({.features = protocol::kFeatureAuth}, &hello);
    ASSERT_TRUE(c.Send(hello));
    absl::StatusOr<RawConnection::Frame> frame = c.Read();
    ASSERT_TRUE(frame.ok()) << frame.status();
    ASSERT_EQ(frame->header.type, protocol::FrameType::kChallenge);
    absl::StatusOr<protocol::Challenge> challenge = protocol::DecodeChallenge(frame->body);
    ASSERT_TRUE(challenge.ok());
    const protocol::Nonce client_nonce = *RandomNonce();
    std::string next;
    if (variant == 2) {
      protocol::AppendRead(1, {.region = 0, .count = 1}, &next);
    } else {
      const AuthKey& key = variant == 0 ? *wrong : *right;
      const auto role = variant == 0 ? AuthKey::Role::kClient : AuthKey::Role::kServer;
      protocol::AppendAuth({client_nonce, *key.Prove(role, challenge->server_nonce, client_nonce)},
                           &next);
    }
    ASSERT_TRUE(c.Send(next));
    expect_refused(
        c, variant == 2 ? protocol::ErrorCode::kBadRequest : protocol::ErrorCode::kAuthFailed);
  }
  // With the right key: AUTH_OK with the server's proof, then WELCOME.
  RawConnection c(server->port());
  absl::StatusOr<protocol::Welcome> welcome = c.HandshakeWithKey(*right);
  ASSERT_TRUE(welcome.ok()) << welcome.status();
  ASSERT_EQ(welcome->regions.size(), 1u);
  EXPECT_EQ(welcome->regions[0].name, kRegion);
  EXPECT_EQ(welcome->features & protocol::kFeatureAuth, protocol::kFeatureAuth);
  EXPECT_TRUE(c.ReadPages(5, 0, 4).ok());
}

// A fake server that takes any proof and answers with a proof of its own
// that is wrong (it does not hold the key) or that is the client's own
// proof sent back: the mount must refuse it before using its region table.
TEST_F(SecurityTest, ClientRefusesAServerThatDoesNotProveTheKey) {
  for (bool reflect : {false, true}) {
    SCOPED_TRACE(reflect ? "reflected proof" : "wrong proof");
    int listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    ASSERT_EQ(bind(listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(listen(listen_fd, 4), 0);
    ASSERT_EQ(getsockname(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    const uint16_t port = ntohs(addr.sin_port);
    std::unique_ptr<ChildProcess> fake = ChildProcess::Start([&] {
      int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return 1;
      auto read_full = [fd](uint8_t* out, size_t n) {
        for (size_t got = 0; got < n;) {
          ssize_t r = recv(fd, out + got, n - got, 0);
          if (r <= 0) return false;
          got += static_cast<size_t>(r);
        }
        return true;
      };
      uint8_t hello[2 * protocol::kHeaderSize];
      if (!read_full(hello, sizeof hello)) return 2;
      std::string frames;
      protocol::AppendChallenge({protocol::Nonce{}}, &frames);
      if (send(fd, frames.data(), frames.size(), MSG_NOSIGNAL) < 0) return 3;
      uint8_t auth[protocol::kHeaderSize + protocol::kNonceSize + protocol::kProofSize];
      if (!read_full(auth, sizeof auth)) return 4;
      protocol::AuthOk ok;
      if (reflect) {
        std::memcpy(ok.proof.data(), auth + protocol::kHeaderSize + protocol::kNonceSize,
                    protocol::kProofSize);
      } else {
        ok.proof.fill(0x5a);
      }
      frames.clear();
      protocol::AppendAuthOk(ok, &frames);
      protocol::Welcome welcome;
      welcome.regions.push_back({kRegion, 8 * kMiB, {}});
      protocol::AppendWelcome(welcome, &frames);
      if (send(fd, frames.data(), frames.size(), MSG_NOSIGNAL) < 0) return 5;
      char byte;
      while (recv(fd, &byte, 1, 0) > 0) {
      }
      close(fd);
      return 0;
    });
    RunResult r = FailingMount(absl::StrCat("tcp://127.0.0.1:", port), {"--auth-key-file", key_});
    ExpectOneErrorLine(r, {"authentication failed", "did not prove the key"});
    EXPECT_EQ(fake->Wait(absl::Seconds(30)), 0);
    close(listen_fd);
  }
}

// The fetcher's reconnects go through the same handshake: a server that
// comes back with another key is not used; once the right one is back,
// the reads that waited complete.
TEST_F(SecurityTest, ReconnectsAuthenticateToo) {
  std::unique_ptr<PageServerProcess> server = Serve({"--auth-key-file", key_});
  ASSERT_NE(server, nullptr);
  const uint16_t port = server->port();
  MountProcess::Options options;
  options.source = server->url();
  options.extra_args = {"--auth-key-file", key_};
  absl::StatusOr<std::unique_ptr<MountProcess>> mount = MountProcess::Start(dir_, options);
  ASSERT_TRUE(mount.ok()) << mount.status();
  const std::string file = (*mount)->File(kRegion);
  const std::vector<uint8_t> head(image_.begin(), image_.begin() + kMiB);
  ASSERT_EQ(RunInChild([&] { return ReadsBack(file, head); }), 0);

  server->Kill();
  server = Serve({"--auth-key-file", other_key_}, port);
  ASSERT_NE(server, nullptr);
  std::unique_ptr<ChildProcess> reader =
      ChildProcess::Start([&] { return ReadsBack(file, image_); });
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (LinesWith((*mount)->log(), "authentication failed") == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_GE(LinesWith((*mount)->log(), "authentication failed"), 1) << (*mount)->log();
  server->Kill();
  server = Serve({"--auth-key-file", key_}, port);
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(reader->Wait(absl::Seconds(120)), 0) << (*mount)->log();
  EXPECT_EQ((*mount)->Unmount(), 0);
}

// --- Key files ------------------------------------------------------------------

TEST_F(SecurityTest, BadKeyFilesAreRefusedOnBothSides) {
  const std::string open_key = WriteKey("open-key", "0123456789abcdef0123456789\n", 0644);
  const std::string short_key = WriteKey("short-key", "0123456789\n");
  const std::string missing = dir_.Sub("no-such-key");
  const struct {
    std::string path;
    std::string mention;
  } cases[] = {{open_key, "chmod 600"}, {short_key, "at least 16"}, {missing, missing}};
  std::unique_ptr<PageServerProcess> server = Serve({});
  ASSERT_NE(server, nullptr);
  for (const auto& c : cases) {
    SCOPED_TRACE(c.path);
    RunResult serve = Lazyramd({"serve", "--listen", "127.0.0.1:0", "--region", Regions().front(),
                                "--auth-key-file", c.path});
    ExpectOneErrorLine(serve, {c.path, c.mention});
    ExpectOneErrorLine(FailingMount(server->url(), {"--auth-key-file", c.path}),
                       {c.path, c.mention});
    EXPECT_FALSE(absl::StrContains(serve.err, "0123456789"));
  }
}

// --- Listen policy -------------------------------------------------------------

TEST_F(SecurityTest, NonLoopbackListenNeedsAKeyOrInsecure) {
  for (const std::string listen : {"0.0.0.0:0", "[::]:0"}) {
    SCOPED_TRACE(listen);
    ExpectOneErrorLine(Lazyramd({"serve", "--listen", listen, "--region", Regions().front()}),
                       {"--auth-key-file", "--insecure", "loopback"});
  }
  const std::string host = NonLoopbackIPv4();
  if (host.empty()) GTEST_SKIP() << "this host has no non-loopback IPv4 address";
  ExpectOneErrorLine(Lazyramd({"serve", "--listen", host + ":0", "--region", Regions().front()}),
                     {host, "--auth-key-file", "--insecure"});

  // Accepted with --insecure, and served to a client without a key.
  PageServerProcess::Options insecure;
  insecure.host = host;
  insecure.extra_args = {"--insecure"};
  absl::StatusOr<std::unique_ptr<PageServerProcess>> server =
      PageServerProcess::Start(Regions(), insecure);
  ASSERT_TRUE(server.ok()) << server.status();
  {
    RawConnection c((*server)->port(), host);
    ASSERT_TRUE(c.connected());
    ASSERT_TRUE(c.Handshake().ok());
    EXPECT_TRUE(c.ReadPages(1, 0, 16).ok());
  }
  (*server)->Stop();

  // Accepted with a key, and a mount with the key reads every byte.
  PageServerProcess::Options keyed;
  keyed.host = host;
  keyed.extra_args = {"--auth-key-file", key_};
  server = PageServerProcess::Start(Regions(), keyed);
  ASSERT_TRUE(server.ok()) << server.status();
  MountProcess::Options options;
  options.source = (*server)->url();
  options.extra_args = {"--auth-key-file", key_};
  absl::StatusOr<std::unique_ptr<MountProcess>> mount = MountProcess::Start(dir_, options);
  ASSERT_TRUE(mount.ok()) << mount.status();
  EXPECT_EQ(RunInChild([&] { return ReadsBack((*mount)->File(kRegion), image_); }), 0);
  EXPECT_EQ((*mount)->Unmount(), 0);
}

TEST_F(SecurityTest, LoopbackNamesNeedNoKey) {
  for (const std::string listen : {"127.0.0.1:0", "127.0.0.2:0", "[::1]:0", "localhost:0"}) {
    SCOPED_TRACE(listen);
    // It starts (and announces its address) rather than failing at once.
    RunResult r = lazyram::testing::Run(
        {LazyramdPath(), "serve", "--listen", listen, "--region", Regions().front()},
        absl::Seconds(3));
    EXPECT_EQ(r.exit_code, -1) << "exited: " << r.err;
    EXPECT_TRUE(absl::StartsWith(r.out, "listening on ")) << r.out << r.err;
  }
}

// --- Server limits ---------------------------------------------------------------

TEST_F(SecurityTest, ConnectionsOverTheCapGetBusyAndAreClosed) {
  std::unique_ptr<PageServerProcess> server = Serve({"--max-connections", "2"});
  ASSERT_NE(server, nullptr);
  auto first = std::make_unique<RawConnection>(server->port());
  RawConnection second(server->port());
  ASSERT_TRUE(first->Handshake().ok());
  ASSERT_TRUE(second.Handshake().ok());
  // Several over the cap: one that says nothing, some that send HELLO.
  for (int i = 0; i < 4; ++i) {
    SCOPED_TRACE(i);
    RawConnection extra(server->port());
    ASSERT_TRUE(extra.connected());
    if (i > 0) {
      std::string hello;
      protocol::AppendHello({}, &hello);
      extra.Send(hello);
    }
    absl::StatusOr<RawConnection::Frame> frame = extra.Read();
    ASSERT_TRUE(frame.ok()) << frame.status();
    ASSERT_EQ(frame->header.type, protocol::FrameType::kError);
    absl::StatusOr<protocol::ErrorReply> error = protocol::DecodeError(frame->body);
    ASSERT_TRUE(error.ok());
    EXPECT_EQ(error->code, protocol::ErrorCode::kBusy);
    EXPECT_TRUE(absl::StrContains(error->message, "too many connections")) << error->message;
    EXPECT_TRUE(extra.WaitClosed(absl::Seconds(30)));
  }
  // The two served ones were not disturbed.
  EXPECT_TRUE(first->ReadPages(1, 0, 8).ok());
  EXPECT_TRUE(second.ReadPages(2, 8, 8).ok());
  // The refusals were logged once, not once each.
  EXPECT_EQ(LinesWith(server->log(), "too many connections"), 1) << server->log();
  // A freed slot is given to the next client.
  first.reset();
  bool served = false;
  for (const absl::Time deadline = absl::Now() + absl::Seconds(30);
       !served && absl::Now() < deadline; absl::SleepFor(absl::Milliseconds(50))) {
    RawConnection next(server->port());
    served = next.Handshake().ok();
  }
  EXPECT_TRUE(served);
}

TEST_F(SecurityTest, HalfOpenConnectionsAreDroppedAfterTheHandshakeTimeout) {
  constexpr absl::Duration kTimeout = absl::Seconds(3);
  std::unique_ptr<PageServerProcess> server =
      Serve({"--auth-key-file", key_, "--handshake-timeout", "3", "--max-connections", "4"});
  ASSERT_NE(server, nullptr);
  const absl::Time start = absl::Now();
  RawConnection silent(server->port());    // says nothing
  RawConnection partial(server->port());   // half a HELLO
  RawConnection unproved(server->port());  // HELLO, but never AUTH
  RawConnection proved(server->port());    // the whole handshake
  std::string hello;
  protocol::AppendHello({.features = protocol::kFeatureAuth}, &hello);
  ASSERT_TRUE(partial.Send(hello.substr(0, 10)));
  ASSERT_TRUE(unproved.Send(hello));
  ASSERT_TRUE(
      proved.HandshakeWithKey(**AuthKey::FromSecret("correct horse battery staple 0123456789"))
          .ok());
  {  // while they hold every slot, another client is refused ...
    RawConnection refused(server->port());
    absl::StatusOr<RawConnection::Frame> frame = refused.Read();
    ASSERT_TRUE(frame.ok()) << frame.status();
    EXPECT_EQ(frame->header.type, protocol::FrameType::kError);
  }
  // ... until the server drops the three that did not finish.
  EXPECT_TRUE(silent.WaitClosed(absl::Seconds(60)));
  EXPECT_TRUE(partial.WaitClosed(absl::Seconds(60)));
  EXPECT_TRUE(unproved.WaitClosed(absl::Seconds(60)));
  EXPECT_GE(absl::Now() - start, kTimeout * 0.9);
  EXPECT_GE(LinesWith(server->log(), "no handshake within"), 1) << server->log();
  // The finished one is never dropped by the timeout.
  absl::SleepFor(kTimeout - (absl::Now() - start) + absl::Seconds(1));
  EXPECT_TRUE(proved.ReadPages(1, 0, 8).ok());

  // Their slots are free again: a mount (three connections) gets them.
  MountProcess::Options options;
  options.source = server->url();
  options.extra_args = {"--auth-key-file", key_};
  absl::StatusOr<std::unique_ptr<MountProcess>> mount = MountProcess::Start(dir_, options);
  ASSERT_TRUE(mount.ok()) << mount.status();
  EXPECT_EQ(RunInChild([&] { return ReadsBack((*mount)->File(kRegion), image_); }), 0)
      << (*mount)->log();
  EXPECT_EQ((*mount)->Unmount(), 0);
}

// A client that sends many READs and never reads the replies must not make
// the server hold them all: at most --max-inflight per connection.
TEST_F(SecurityTest, InflightCapBoundsWhatAClientThatDoesNotReadCosts) {
  const std::string dense = dir_.Sub("dense");
  WriteImage(dense, 8 * kMiB, 12, /*zero_every=*/0);  // no zero page: every reply is 1 MiB
  PageServerProcess::Options options;
  options.extra_args = {"--max-inflight", "2"};
  absl::StatusOr<std::unique_ptr<PageServerProcess>> server =
      PageServerProcess::Start({"dense=" + dense}, options);
  ASSERT_TRUE(server.ok()) << server.status();
  RawConnection c((*server)->port());
  ASSERT_TRUE(c.Handshake().ok());
  constexpr int kReads = 256;  // 256 MiB of replies
  std::string reads;
  for (int i = 0; i < kReads; ++i) {
    protocol::AppendRead(i, {.region = 0, .count = 256, .first_page = (i % 8) * 256ull}, &reads);
  }
  ASSERT_TRUE(c.Send(reads));
  absl::SleepFor(absl::Seconds(3));  // the server does what it can meanwhile
  const uint64_t peak = PeakRss((*server)->pid());
  EXPECT_GT(peak, 0u);
  EXPECT_LT(peak, 96 * kMiB) << "the server buffered replies nobody reads";
  // Replies are tagged and may come in any order (two reads are in flight
  // at once): every request is answered exactly once, with its own pages.
  std::vector<bool> answered(kReads, false);
  for (int i = 0; i < kReads; ++i) {
    absl::StatusOr<RawConnection::Frame> frame = c.Read();
    ASSERT_TRUE(frame.ok()) << i << ": " << frame.status();
    const uint64_t tag = frame->header.tag;
    ASSERT_LT(tag, static_cast<uint64_t>(kReads)) << i;
    ASSERT_FALSE(answered[tag]) << "tag " << tag << " answered twice";
    answered[tag] = true;
    absl::Status pages = RawConnection::CheckPages(*frame, tag, (tag % 8) * 256ull, 256);
    ASSERT_TRUE(pages.ok()) << i << ": " << pages;
  }
  std::printf("page server peak RSS with %d unread 1 MiB replies, --max-inflight 2: %.1f MiB\n",
              kReads, static_cast<double>(peak) / kMiB);
}

TEST_F(SecurityTest, MountWorksWithTheSmallestLimits) {
  // One request at a time per connection, exactly the mount's connections.
  std::unique_ptr<PageServerProcess> server =
      Serve({"--auth-key-file", key_, "--max-inflight", "1", "--max-connections", "3"});
  ASSERT_NE(server, nullptr);
  MountProcess::Options options;
  options.source = server->url();
  options.prefetch = true;
  options.extra_args = {"--auth-key-file", key_};
  absl::StatusOr<std::unique_ptr<MountProcess>> mount = MountProcess::Start(dir_, options);
  ASSERT_TRUE(mount.ok()) << mount.status();
  RunResult wait = (*mount)->Ctl({"wait", "--timeout", "120"}, absl::Seconds(150));
  EXPECT_EQ(wait.exit_code, 0) << wait.out << wait.err;
  EXPECT_EQ(RunInChild([&] { return ReadsBack((*mount)->File(kRegion), image_); }), 0);
  EXPECT_EQ(LinesWith(server->log(), "too many connections"), 0) << server->log();
  EXPECT_EQ((*mount)->Unmount(), 0);
}

// --- Who sees the mount ---------------------------------------------------------

// Runs `body` in a child as user nobody (uid/gid 65534, no groups).
int AsNobody(const std::function<int()>& body) {
  return RunInChild([&] {
    const uid_t nobody = 65534;
    if (setgroups(0, nullptr) != 0 || setresgid(nobody, nobody, nobody) != 0 ||
        setresuid(nobody, nobody, nobody) != 0) {
      return 100;
    }
    return body();
  });
}

TEST_F(SecurityTest, OnlyTheMountingUserSeesTheMountUnlessAllowOther) {
  std::unique_ptr<PageServerProcess> server = Serve({});
  ASSERT_NE(server, nullptr);
  // Open the way to the mount point, so that only the mount stands in it.
  ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
  for (bool allow_other : {false, true}) {
    SCOPED_TRACE(allow_other ? "--allow-other" : "default");
    MountProcess::Options options;
    options.source = server->url();
    if (allow_other) options.extra_args = {"--allow-other"};
    absl::StatusOr<std::unique_ptr<MountProcess>> mount = MountProcess::Start(dir_, options);
    ASSERT_TRUE(mount.ok()) << mount.status();
    const std::string file = (*mount)->File(kRegion);
    const int code = AsNobody([&] {
      struct stat st;
      if (stat(file.c_str(), &st) != 0) return errno == EACCES ? 1 : 2;
      if ((st.st_mode & 07777) != 0600) return 3;
      // Visible, but the file's mode still keeps others out.
      int fd = open(file.c_str(), O_RDONLY);
      if (fd >= 0) {
        close(fd);
        return 4;
      }
      return errno == EACCES ? 0 : 5;
    });
    EXPECT_EQ(code, allow_other ? 0 : 1);
    EXPECT_EQ((*mount)->Unmount(), 0);
  }
}

}  // namespace
}  // namespace lazyram::testing
