// ServerLoop and PageServer, driven over raw sockets on 127.0.0.1 with the
// protocol codec: what a client sees on the wire.
#include "daemon/server/server_loop.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/base/unique_fd.h"
#include "daemon/protocol/auth_key.h"
#include "daemon/protocol/protocol.h"
#include "daemon/server/page_server.h"
#include "gtest/gtest.h"

namespace lazyram {
namespace {

using protocol::ErrorCode;
using protocol::FrameType;
using protocol::kPageSize;

// Generous: the machine may be loaded. Nothing here waits this long when
// the code is right.
constexpr absl::Duration kWait = absl::Seconds(30);

// The image: 64 full pages and a 100-byte partial 65th. Pages 20..23 are
// written as zero bytes (data on disk, zero content), pages 32..47 are a
// hole, every other page has random bytes (the partial one too).
constexpr uint64_t kFullPages = 64;
constexpr uint64_t kImageSize = kFullPages * kPageSize + 100;
constexpr uint64_t kImagePages = kFullPages + 1;
constexpr uint64_t kHoleFirst = 32, kHoleEnd = 48;

struct Frame {
  protocol::FrameHeader header;
  std::vector<uint8_t> body;
};

// One client connection, blocking I/O with a poll deadline on every read.
class Client {
 public:
  explicit Client(uint16_t port) {
    fd_.reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    EXPECT_TRUE(fd_.valid()) << std::strerror(errno);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    EXPECT_TRUE(connected_) << std::strerror(errno);
    int one = 1;
    setsockopt(fd_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  bool connected() const { return connected_; }

  bool Send(const std::string& bytes) {
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = send(fd_.get(), bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      done += static_cast<size_t>(n);
    }
    return true;
  }

  enum class Got { kBytes, kEof, kTimeout, kError };
  // Exactly `n` bytes into `out`, unless the peer closes, fails or the
  // deadline passes first.
  Got ReadExactly(uint8_t* out, size_t n, absl::Time deadline) {
    size_t done = 0;
    while (done < n) {
      pollfd p{fd_.get(), POLLIN, 0};
      const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
      if (ms <= 0) return Got::kTimeout;
      const int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(ms, 1000)));
      if (r < 0 && errno != EINTR) return Got::kError;
      if (r <= 0) continue;
      const ssize_t got = recv(fd_.get(), out + done, n - done, 0);
      if (got == 0) return Got::kEof;
      if (got < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return errno == ECONNRESET ? Got::kEof : Got::kError;
      }
      done += static_cast<size_t>(got);
    }
    return Got::kBytes;
  }

  // The next frame; fails the test (and returns false) on anything else.
  bool ReadFrame(Frame* frame) {
    const absl::Time deadline = absl::Now() + kWait;
    uint8_t header[protocol::kHeaderSize];
    if (Got g = ReadExactly(header, sizeof header, deadline); g != Got::kBytes) {
      ADD_FAILURE() << "no frame header: " << static_cast<int>(g);
      return false;
    }
    absl::StatusOr<protocol::FrameHeader> h =
        protocol::DecodeHeader(header, protocol::kMaxHandshakeBody);
    if (!h.ok()) {
      ADD_FAILURE() << h.status();
      return false;
    }
    frame->header = *h;
    frame->body.resize(h->body_len);
    if (Got g = ReadExactly(frame->body.data(), h->body_len, deadline); g != Got::kBytes) {
      ADD_FAILURE() << "frame body cut short: " << static_cast<int>(g);
      return false;
    }
    return true;
  }

  // True when the server closes the connection (EOF or reset) before the
  // deadline; every byte before that is discarded.
  bool WaitClosed() {
    const absl::Time deadline = absl::Now() + kWait;
    uint8_t sink[4096];
    for (;;) {
      pollfd p{fd_.get(), POLLIN, 0};
      const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
      if (ms <= 0) return false;
      if (poll(&p, 1, static_cast<int>(std::min<int64_t>(ms, 1000))) <= 0) continue;
      const ssize_t n = recv(fd_.get(), sink, sizeof sink, 0);
      if (n == 0 || (n < 0 && errno == ECONNRESET)) return true;
      if (n < 0 && errno != EINTR && errno != EAGAIN) return true;
    }
  }

  // HELLO, then the WELCOME decoded.
  absl::StatusOr<protocol::Welcome> Handshake(uint32_t features = 0) {
    std::string hello;
    protocol::AppendHello({protocol::kVersion, features}, &hello);
    if (!Send(hello)) return absl::UnavailableError("send HELLO");
    Frame frame;
    if (!ReadFrame(&frame)) return absl::UnavailableError("no WELCOME");
    if (frame.header.type != FrameType::kWelcome) {
      return absl::InternalError(
          absl::StrCat("expected WELCOME, got type ", static_cast<int>(frame.header.type)));
    }
    return protocol::DecodeWelcome(frame.body);
  }

  int fd() const { return fd_.get(); }

 private:
  UniqueFd fd_;
  bool connected_ = false;
};

std::string Read(uint64_t tag, uint32_t region, uint64_t first, uint32_t count,
                 protocol::Priority priority = protocol::Priority::kDemand) {
  std::string out;
  protocol::AppendRead(tag, {region, count, first, priority}, &out);
  return out;
}

class ServerLoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = absl::StrCat(base != nullptr ? base : "/tmp", "/server_loop_test.XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    image_.assign(kImageSize, 0);
    std::mt19937_64 rng(11);
    for (uint64_t p = 0; p < kImagePages; ++p) {
      if ((p >= 20 && p < 24) || (p >= kHoleFirst && p < kHoleEnd)) continue;
      for (uint64_t i = p * kPageSize; i < std::min((p + 1) * kPageSize, kImageSize); ++i) {
        image_[i] = static_cast<uint8_t>(rng() | 1);  // never zero: a data page is not zero
      }
    }
    path_ = dir_ + "/img";
    UniqueFd fd(open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    ASSERT_TRUE(fd.valid());
    // Everything but the hole is written; the hole is never touched.
    const uint64_t hole = kHoleFirst * kPageSize, hole_end = kHoleEnd * kPageSize;
    ASSERT_EQ(pwrite(fd.get(), image_.data(), hole, 0), static_cast<ssize_t>(hole));
    ASSERT_EQ(pwrite(fd.get(), image_.data() + hole_end, kImageSize - hole_end, hole_end),
              static_cast<ssize_t>(kImageSize - hole_end));
    // A second, small region: one page.
    small_path_ = dir_ + "/small";
    UniqueFd small(open(small_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    ASSERT_TRUE(small.valid());
    std::string bytes(kPageSize, 's');
    ASSERT_EQ(write(small.get(), bytes.data(), bytes.size()), static_cast<ssize_t>(kPageSize));
  }

  void TearDown() override {
    if (server_ != nullptr) {
      server_->Stop();
      server_thread_.join();
      EXPECT_TRUE(run_status_.ok()) << run_status_;
    }
    std::filesystem::remove_all(dir_);
  }

  void StartServer(PageServer::Options options = {}) {
    options.listen = *NetAddress::Parse("127.0.0.1:0", /*allow_port_zero=*/true);
    options.regions = {{"mem0", path_}, {"small", small_path_}};
    options.regions.insert(options.regions.end(), extra_regions_.begin(), extra_regions_.end());
    absl::StatusOr<std::unique_ptr<PageServer>> server = PageServer::Create(std::move(options));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    server_thread_ = std::thread([this] { run_status_ = server_->Run(); });
  }
  uint16_t port() const { return server_->address().port; }

  bool PageIsZero(uint64_t page) const {
    for (uint64_t i = page * kPageSize; i < std::min((page + 1) * kPageSize, kImageSize); ++i) {
      if (image_[i] != 0) return false;
    }
    return true;
  }

  // Checks a PAGES frame against the image: its range, the checksum, a zero
  // flag for exactly the all-zero pages, the bytes of the others (a partial
  // last page zero-padded).
  void ExpectPages(const Frame& frame, uint64_t tag, uint32_t region, uint64_t first,
                   uint32_t count) {
    ASSERT_EQ(frame.header.type, FrameType::kPages);
    EXPECT_EQ(frame.header.tag, tag);
    absl::StatusOr<protocol::PagesView> pages = protocol::DecodePages(frame.body);
    ASSERT_TRUE(pages.ok()) << pages.status();  // the checksum included
    EXPECT_EQ(pages->checksum, protocol::PagesChecksum(pages->flags, pages->payload));
    EXPECT_EQ(pages->region, region);
    EXPECT_EQ(pages->first_page, first);
    ASSERT_EQ(pages->count, count);
    if (region != 0) return;
    size_t data = 0;
    for (uint32_t i = 0; i < count; ++i) {
      const uint64_t page = first + i;
      const bool zero = pages->flags[i] == static_cast<uint8_t>(protocol::PageFlag::kZero);
      EXPECT_EQ(zero, PageIsZero(page)) << "page " << page;
      if (zero) continue;
      ASSERT_LE((data + 1) * kPageSize, pages->payload.size());
      std::vector<uint8_t> want(kPageSize, 0);
      const uint64_t end = std::min((page + 1) * kPageSize, kImageSize);
      std::memcpy(want.data(), image_.data() + page * kPageSize, end - page * kPageSize);
      EXPECT_EQ(std::memcmp(pages->payload.data() + data * kPageSize, want.data(), kPageSize), 0)
          << "page " << page;
      ++data;
    }
    EXPECT_EQ(pages->payload.size(), data * kPageSize);
  }

  void ExpectError(const Frame& frame, uint64_t tag, ErrorCode code) {
    ASSERT_EQ(frame.header.type, FrameType::kError);
    EXPECT_EQ(frame.header.tag, tag);
    absl::StatusOr<protocol::ErrorReply> error = protocol::DecodeError(frame.body);
    ASSERT_TRUE(error.ok()) << error.status();
    EXPECT_EQ(error->code, code) << error->message;
  }

  // Fails the test unless `client` gets a correct answer to a READ.
  void ExpectServes(Client& client, uint64_t tag) {
    ASSERT_TRUE(client.Send(Read(tag, 0, 5, 3)));
    Frame frame;
    ASSERT_TRUE(client.ReadFrame(&frame));
    ExpectPages(frame, tag, 0, 5, 3);
  }

  std::string dir_, path_, small_path_;
  std::vector<PageServer::RegionSpec> extra_regions_;
  std::vector<uint8_t> image_;
  std::unique_ptr<PageServer> server_;
  std::thread server_thread_;
  absl::Status run_status_;
};

TEST_F(ServerLoopTest, HandshakeSendsTheRegionTableWithTheHoles) {
  StartServer();
  Client client(port());
  ASSERT_TRUE(client.connected());
  absl::StatusOr<protocol::Welcome> welcome = client.Handshake();
  ASSERT_TRUE(welcome.ok()) << welcome.status();
  EXPECT_EQ(welcome->version, protocol::kVersion);
  EXPECT_EQ(welcome->features, 0u);  // no key: no authentication
  EXPECT_EQ(welcome->page_size, kPageSize);
  ASSERT_EQ(welcome->regions.size(), 2u);
  EXPECT_EQ(welcome->regions[0].name, "mem0");
  EXPECT_EQ(welcome->regions[0].size, kImageSize);
  EXPECT_EQ(welcome->regions[0].page_count(), kImagePages);
  EXPECT_EQ(welcome->regions[1].name, "small");
  EXPECT_EQ(welcome->regions[1].size, kPageSize);
  // Zero extents are the file's holes: only zero pages, and the hole that
  // was never written among them (pages written as zero bytes are data to
  // the filesystem and are elided per page instead).
  bool hole_listed = false;
  for (const protocol::ZeroExtent& e : welcome->regions[0].zero_extents) {
    for (uint64_t p = e.first_page; p < e.first_page + e.page_count; ++p) {
      EXPECT_TRUE(PageIsZero(p)) << "page " << p << " listed as zero";
    }
    hole_listed |= e.first_page <= kHoleFirst && e.first_page + e.page_count >= kHoleEnd;
  }
  EXPECT_TRUE(hole_listed);
  EXPECT_EQ(welcome->regions[0].zero_extents, server_->welcome().regions[0].zero_extents);
}

TEST_F(ServerLoopTest, HoleToTheEndOfTheFileCoversThePartialLastPage) {
  // One page of data, then a hole to 3 pages and 10 bytes.
  const std::string tail = dir_ + "/tail";
  UniqueFd fd(open(tail.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  ASSERT_TRUE(fd.valid());
  const std::string page(kPageSize, 't');
  ASSERT_EQ(write(fd.get(), page.data(), page.size()), static_cast<ssize_t>(kPageSize));
  ASSERT_EQ(ftruncate(fd.get(), 3 * kPageSize + 10), 0);
  extra_regions_.push_back({"tail", tail});
  StartServer();
  Client client(port());
  absl::StatusOr<protocol::Welcome> welcome = client.Handshake();
  ASSERT_TRUE(welcome.ok()) << welcome.status();
  ASSERT_EQ(welcome->regions.size(), 3u);
  EXPECT_EQ(welcome->regions[2].page_count(), 4u);
  const std::vector<protocol::ZeroExtent> want = {{1, 3}};
  EXPECT_EQ(welcome->regions[2].zero_extents, want);
  ASSERT_TRUE(client.Send(Read(1, 2, 0, 4)));
  Frame frame;
  ASSERT_TRUE(client.ReadFrame(&frame));
  ExpectPages(frame, 1, 2, 0, 4);
  absl::StatusOr<protocol::PagesView> pages = protocol::DecodePages(frame.body);
  ASSERT_TRUE(pages.ok()) << pages.status();
  const auto kZero = static_cast<uint8_t>(protocol::PageFlag::kZero);
  EXPECT_NE(pages->flags[0], kZero);
  EXPECT_EQ(pages->flags[1], kZero);
  EXPECT_EQ(pages->flags[2], kZero);
  EXPECT_EQ(pages->flags[3], kZero);
  ASSERT_EQ(pages->payload.size(), kPageSize);
  EXPECT_EQ(pages->payload[0], 't');
}

TEST_F(ServerLoopTest, ReadsReturnTheFilesPagesWithZeroPagesElided) {
  StartServer();
  Client client(port());
  ASSERT_TRUE(client.Handshake().ok());
  // Data, zero-byte pages, the hole and data again; then the partial last
  // page; then one READ of the whole region.
  ASSERT_TRUE(client.Send(Read(1, 0, 16, 40)));
  Frame frame;
  ASSERT_TRUE(client.ReadFrame(&frame));
  ExpectPages(frame, 1, 0, 16, 40);
  ASSERT_TRUE(client.Send(Read(2, 0, kImagePages - 1, 1)));
  ASSERT_TRUE(client.ReadFrame(&frame));
  ExpectPages(frame, 2, 0, kImagePages - 1, 1);
  ASSERT_TRUE(client.Send(Read(3, 0, 0, kImagePages, protocol::Priority::kBulk)));
  ASSERT_TRUE(client.ReadFrame(&frame));
  ExpectPages(frame, 3, 0, 0, kImagePages);
  // The second region.
  ASSERT_TRUE(client.Send(Read(4, 1, 0, 1)));
  ASSERT_TRUE(client.ReadFrame(&frame));
  ExpectPages(frame, 4, 1, 0, 1);
  absl::StatusOr<protocol::PagesView> small = protocol::DecodePages(frame.body);
  ASSERT_TRUE(small.ok());
  ASSERT_EQ(small->payload.size(), kPageSize);
  EXPECT_EQ(small->payload[0], 's');
  EXPECT_EQ(small->payload[kPageSize - 1], 's');
}

TEST_F(ServerLoopTest, BadReadsAreAnsweredWithErrorsAndTheConnectionGoesOn) {
  StartServer();
  Client client(port());
  ASSERT_TRUE(client.Handshake().ok());
  std::string requests = Read(10, 0, kImagePages, 1) +                       // past the end
                         Read(11, 0, kImagePages - 2, 3) +                   // runs past the end
                         Read(12, 7, 0, 1) +                                 // no such region
                         Read(13, 0, 0, 0) +                                 // count 0
                         Read(14, 0, 0, protocol::kMaxPagesPerRequest + 1);  // too many
  protocol::AppendHello({}, &requests);  // a second HELLO: not a READ (tag 0)
  ASSERT_TRUE(client.Send(requests));
  Frame frame;
  ASSERT_TRUE(client.ReadFrame(&frame));
  ExpectError(frame, 10, ErrorCode::kOutOfRange);
  ASSERT_TRUE(client.ReadFrame(&frame));
  ExpectError(frame, 11, ErrorCode::kOutOfRange);
  ASSERT_TRUE(client.ReadFrame(&frame));
  ExpectError(frame, 12, ErrorCode::kNoSuchRegion);
  ASSERT_TRUE(client.ReadFrame(&frame));
  ExpectError(frame, 13, ErrorCode::kOutOfRange);
  ASSERT_TRUE(client.ReadFrame(&frame));
  ExpectError(frame, 14, ErrorCode::kOutOfRange);
  ASSERT_TRUE(client.ReadFrame(&frame));
  ExpectError(frame, 0, ErrorCode::kBadRequest);
  ExpectServes(client, 15);
}

TEST_F(ServerLoopTest, HelloWithAnotherVersionIsRefusedAndClosed) {
  StartServer();
  Client client(port());
  std::string hello;
  protocol::AppendHello({static_cast<uint16_t>(protocol::kVersion + 1), 0}, &hello);
  ASSERT_TRUE(client.Send(hello));
  Frame frame;
  ASSERT_TRUE(client.ReadFrame(&frame));
  ExpectError(frame, 0, ErrorCode::kBadVersion);
  EXPECT_TRUE(client.WaitClosed());
}

TEST_F(ServerLoopTest, OversizedOrGarbledFramesCloseOnlyTheirConnection) {
  StartServer();
  Client good(port());
  ASSERT_TRUE(good.Handshake().ok());
  ExpectServes(good, 1);

  // A header announcing a megabyte of body, after the handshake...
  Client big(port());
  ASSERT_TRUE(big.Handshake().ok());
  std::string oversized(protocol::kHeaderSize, '\0');
  protocol::EncodeHeader({1u << 20, FrameType::kRead, 0, 99},
                         reinterpret_cast<uint8_t*>(oversized.data()));
  ASSERT_TRUE(big.Send(oversized));
  // ...one before it (a HELLO may not be that big either)...
  Client big_hello(port());
  std::string oversized_hello(protocol::kHeaderSize, '\0');
  protocol::EncodeHeader({4096, FrameType::kHello, 0, 0},
                         reinterpret_cast<uint8_t*>(oversized_hello.data()));
  ASSERT_TRUE(big_hello.Send(oversized_hello));
  // ...and bytes that are no frame at all.
  Client garbled(port());
  ASSERT_TRUE(garbled.Handshake().ok());
  ASSERT_TRUE(garbled.Send(std::string(64, '\xee')));

  EXPECT_TRUE(big.WaitClosed());
  EXPECT_TRUE(big_hello.WaitClosed());
  EXPECT_TRUE(garbled.WaitClosed());
  // The others are served as before, and new ones too.
  ExpectServes(good, 2);
  Client later(port());
  ASSERT_TRUE(later.Handshake().ok());
  ExpectServes(later, 3);
}

TEST_F(ServerLoopTest, PipelinedReadsPastTheInflightCapAreAllAnswered) {
  StartServer({.max_reads_per_connection = 4});
  Client client(port());
  ASSERT_TRUE(client.Handshake().ok());
  // 300 READs in one go, far more than may be in flight: the rest wait in
  // the socket and are taken as replies go out.
  struct Want {
    uint64_t first;
    uint32_t count;
  };
  std::map<uint64_t, Want> wanted;
  std::string requests;
  std::mt19937 rng(3);
  for (uint64_t tag = 100; tag < 400; ++tag) {
    const uint32_t count = 1 + rng() % 8;
    const uint64_t first = rng() % (kImagePages - count + 1);
    wanted[tag] = {first, count};
    requests += Read(tag, 0, first, count,
                     tag % 2 ? protocol::Priority::kBulk : protocol::Priority::kDemand);
  }
  // Sent from another thread: the replies must be read meanwhile, or both
  // sides' socket buffers could fill up.
  std::thread sender([&] { EXPECT_TRUE(client.Send(requests)); });
  for (size_t i = 0; i < 300; ++i) {
    Frame frame;
    if (!client.ReadFrame(&frame)) break;
    auto it = wanted.find(frame.header.tag);
    ASSERT_NE(it, wanted.end()) << "reply with unknown or repeated tag " << frame.header.tag;
    ExpectPages(frame, it->first, 0, it->second.first, it->second.count);
    wanted.erase(it);
  }
  sender.join();
  EXPECT_TRUE(wanted.empty()) << wanted.size() << " READs not answered";
}

TEST_F(ServerLoopTest, DemandChannelIsHandedToTheDemandLoopAndServed) {
  StartServer();
  Client bulk(port());
  ASSERT_TRUE(bulk.Handshake().ok());
  EXPECT_EQ(server_->demand_connections(), 0);
  {
    Client demand(port());
    // READs sent along with the HELLO, before the WELCOME came back: they
    // reach the demand loop with the connection and are answered there.
    std::string bytes;
    protocol::AppendHello({protocol::kVersion, protocol::kFeatureDemandChannel}, &bytes);
    bytes += Read(1, 0, 0, 2) + Read(2, 0, 60, 5);
    ASSERT_TRUE(demand.Send(bytes));
    Frame frame;
    ASSERT_TRUE(demand.ReadFrame(&frame));
    ASSERT_EQ(frame.header.type, FrameType::kWelcome);
    absl::StatusOr<protocol::Welcome> welcome = protocol::DecodeWelcome(frame.body);
    ASSERT_TRUE(welcome.ok()) << welcome.status();
    // A hint only: never confirmed in WELCOME.
    EXPECT_EQ(welcome->features & protocol::kFeatureDemandChannel, 0u);
    std::map<uint64_t, Frame> replies;
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(demand.ReadFrame(&frame));
      replies[frame.header.tag] = frame;
    }
    ASSERT_EQ(replies.count(1), 1u);
    ASSERT_EQ(replies.count(2), 1u);
    ExpectPages(replies[1], 1, 0, 0, 2);
    ExpectPages(replies[2], 2, 0, 60, 5);
    EXPECT_EQ(server_->demand_connections(), 1);
    ExpectServes(demand, 3);
    ExpectServes(bulk, 4);
  }
  // Hung up: the demand loop lets it go.
  const absl::Time deadline = absl::Now() + kWait;
  while (server_->demand_connections() != 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(server_->demand_connections(), 0);
  ExpectServes(bulk, 5);
}

TEST_F(ServerLoopTest, ConnectionsOverTheCapGetBusy) {
  StartServer({.max_connections = 2});
  Client a(port()), b(port());
  ASSERT_TRUE(a.Handshake().ok());
  ASSERT_TRUE(b.Handshake(protocol::kFeatureDemandChannel).ok());  // counts too
  Client c(port());
  Frame frame;
  ASSERT_TRUE(c.ReadFrame(&frame));
  ExpectError(frame, 0, ErrorCode::kBusy);
  EXPECT_TRUE(c.WaitClosed());
  ExpectServes(a, 1);
  ExpectServes(b, 2);
}

TEST_F(ServerLoopTest, SilentConnectionIsDroppedAfterTheHandshakeTimeout) {
  StartServer({.handshake_timeout = absl::Milliseconds(200)});
  Client silent(port());
  Client good(port());
  ASSERT_TRUE(good.Handshake().ok());
  EXPECT_TRUE(silent.WaitClosed());
  // A connection that finished its handshake has no deadline.
  absl::SleepFor(absl::Milliseconds(400));
  ExpectServes(good, 1);
}

TEST_F(ServerLoopTest, WithAKeyTheClientMustProveItBeforeTheRegionTable) {
  absl::StatusOr<std::shared_ptr<const AuthKey>> key =
      AuthKey::FromSecret("a shared secret of the test");
  ASSERT_TRUE(key.ok()) << key.status();
  absl::StatusOr<std::shared_ptr<const AuthKey>> other =
      AuthKey::FromSecret("another secret, not the server's");
  ASSERT_TRUE(other.ok()) << other.status();
  StartServer({.auth_key = *key});

  // HELLO, CHALLENGE, AUTH with `proving`'s proof; the first frame after.
  auto authenticate = [&](Client& client, const AuthKey& proving, Frame* after) {
    std::string hello;
    protocol::AppendHello({protocol::kVersion, protocol::kFeatureAuth}, &hello);
    ASSERT_TRUE(client.Send(hello));
    Frame frame;
    ASSERT_TRUE(client.ReadFrame(&frame));
    ASSERT_EQ(frame.header.type, FrameType::kChallenge);
    absl::StatusOr<protocol::Challenge> challenge = protocol::DecodeChallenge(frame.body);
    ASSERT_TRUE(challenge.ok()) << challenge.status();
    absl::StatusOr<protocol::Nonce> nonce = RandomNonce();
    ASSERT_TRUE(nonce.ok());
    absl::StatusOr<protocol::Proof> proof =
        proving.Prove(AuthKey::Role::kClient, challenge->server_nonce, *nonce);
    ASSERT_TRUE(proof.ok());
    std::string auth;
    protocol::AppendAuth({*nonce, *proof}, &auth);
    ASSERT_TRUE(client.Send(auth));
    ASSERT_TRUE(client.ReadFrame(after));
    if (after->header.type != FrameType::kAuthOk) return;
    // The server proves the key too.
    absl::StatusOr<protocol::AuthOk> ok = protocol::DecodeAuthOk(after->body);
    ASSERT_TRUE(ok.ok()) << ok.status();
    EXPECT_TRUE(proving.Verify(AuthKey::Role::kServer, challenge->server_nonce, *nonce, ok->proof));
    ASSERT_TRUE(client.ReadFrame(after));
  };

  Client right(port());
  Frame frame;
  authenticate(right, **key, &frame);
  ASSERT_EQ(frame.header.type, FrameType::kWelcome);
  absl::StatusOr<protocol::Welcome> welcome = protocol::DecodeWelcome(frame.body);
  ASSERT_TRUE(welcome.ok()) << welcome.status();
  EXPECT_EQ(welcome->features & protocol::kFeatureAuth, protocol::kFeatureAuth);
  ASSERT_EQ(welcome->regions.size(), 2u);
  ExpectServes(right, 1);

  Client wrong(port());
  authenticate(wrong, **other, &frame);
  ExpectError(frame, 0, ErrorCode::kAuthFailed);
  EXPECT_TRUE(wrong.WaitClosed());

  Client without(port());
  std::string hello;
  protocol::AppendHello({}, &hello);
  ASSERT_TRUE(without.Send(hello));
  ASSERT_TRUE(without.ReadFrame(&frame));
  ExpectError(frame, 0, ErrorCode::kAuthRequired);
  EXPECT_TRUE(without.WaitClosed());

  // A READ instead of AUTH is not served either.
  Client skipping(port());
  std::string bytes;
  protocol::AppendHello({protocol::kVersion, protocol::kFeatureAuth}, &bytes);
  ASSERT_TRUE(skipping.Send(bytes));
  ASSERT_TRUE(skipping.ReadFrame(&frame));
  ASSERT_EQ(frame.header.type, FrameType::kChallenge);
  ASSERT_TRUE(skipping.Send(Read(7, 0, 0, 1)));
  ASSERT_TRUE(skipping.ReadFrame(&frame));
  ExpectError(frame, 7, ErrorCode::kBadRequest);
  EXPECT_TRUE(skipping.WaitClosed());
  ExpectServes(right, 2);
}

}  // namespace
}  // namespace lazyram
