#include "daemon/fetch/source_replicas.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "daemon/server/page_server.h"
#include "gtest/gtest.h"

namespace lazyram {
namespace {

constexpr absl::Duration kTimeout = absl::Seconds(5);

// A page server on 127.0.0.1 (any port) run on its own thread.
class ServerThread {
 public:
  ServerThread(const std::string& name, const std::string& path) {
    PageServer::Options options;
    options.listen = *NetAddress::Parse("127.0.0.1:0", /*allow_port_zero=*/true);
    options.regions.push_back({name, path});
    absl::StatusOr<std::unique_ptr<PageServer>> server = PageServer::Create(std::move(options));
    EXPECT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    thread_ = std::thread([this] { (void)server_->Run(); });
  }
  ~ServerThread() { Stop(); }
  void Stop() {
    if (!thread_.joinable()) return;
    server_->Stop();
    thread_.join();
  }
  NetAddress address() const { return server_->address(); }

 private:
  std::unique_ptr<PageServer> server_;
  std::thread thread_;
};

class SourceReplicasTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lazyram-replicas-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // A file of `size` bytes of 0x5a, with a hole of `hole` bytes at its end.
  std::string File(const std::string& name, uint64_t size, uint64_t hole = 0) {
    const std::string path = absl::StrCat(dir_, "/", name);
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    EXPECT_GE(fd, 0);
    std::string data(size - hole, '\x5a');
    EXPECT_EQ(write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
    close(fd);
    return path;
  }

  std::string dir_;
};

TEST_F(SourceReplicasTest, FirstAnsweringReplicaDefinesTheTableAndOthersAreChecked) {
  const std::string image = File("img", 1 << 20);
  ServerThread a("mem0", image), same("mem0", image);
  ServerThread bigger("mem0", File("bigger", 2 << 20));
  ServerThread holey("mem0", File("holey", 1 << 20, 256 << 10));
  ServerThread renamed("pc.ram", image);
  SourceReplicas replicas(
      {a.address(), same.address(), bigger.address(), holey.address(), renamed.address()});
  absl::StatusOr<DialedSource> first = replicas.DialAtStart(kTimeout);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(replicas.welcome().regions.size(), 1u);
  EXPECT_EQ(replicas.welcome().regions[0].name, "mem0");
  EXPECT_EQ(replicas.current(), 0u);
  std::vector<SourceReplicas::Info> info = replicas.Snapshot();
  EXPECT_EQ(info[1].state, SourceReplicas::State::kStandby);
  for (size_t i = 2; i < 5; ++i) {
    EXPECT_EQ(info[i].state, SourceReplicas::State::kRefused) << i;
    EXPECT_EQ(info[i].refusals, 1u) << i;
  }
}

TEST_F(SourceReplicasTest, FailsOverRoundRobinAndRefusesAnotherImage) {
  const std::string image = File("img", 1 << 20);
  ServerThread a("mem0", image), b("mem0", image);
  ServerThread other("mem0", File("other", 3 << 20));
  SourceReplicas replicas({a.address(), other.address(), b.address()});
  ASSERT_TRUE(replicas.DialAtStart(kTimeout).ok());
  replicas.ConnectionUp(0);
  EXPECT_EQ(replicas.Snapshot()[0].state, SourceReplicas::State::kUp);

  // The replica in use fails: the next one becomes current...
  a.Stop();
  replicas.ConnectionDown(0, /*failed=*/true);
  EXPECT_EQ(replicas.current(), 1u);
  EXPECT_EQ(replicas.failovers(), 1u);
  // ... but serves another image: refused, and the one after it is tried.
  size_t index = 99;
  absl::StatusOr<DialedSource> dialed = replicas.DialCurrent(kTimeout, &index);
  EXPECT_EQ(index, 1u);
  EXPECT_TRUE(absl::IsFailedPrecondition(dialed.status())) << dialed.status();
  EXPECT_NE(dialed.status().message().find("different regions"), std::string::npos);
  EXPECT_EQ(replicas.Snapshot()[1].state, SourceReplicas::State::kRefused);
  EXPECT_EQ(replicas.current(), 2u);
  dialed = replicas.DialCurrent(kTimeout, &index);
  ASSERT_TRUE(dialed.ok()) << dialed.status();
  EXPECT_EQ(index, 2u);
  replicas.ConnectionUp(2);
  // Round robin wraps to the first, which is down now.
  replicas.ConnectionDown(2, /*failed=*/true);
  EXPECT_EQ(replicas.current(), 0u);
  // A stopped in-process server still holds its listening socket: the
  // handshake times out.
  dialed = replicas.DialCurrent(absl::Seconds(1), &index);
  EXPECT_TRUE(absl::IsUnavailable(dialed.status())) << dialed.status();
  EXPECT_EQ(replicas.Snapshot()[0].state, SourceReplicas::State::kDown);
  EXPECT_EQ(replicas.current(), 1u);
  EXPECT_EQ(replicas.failovers(), 4u);
}

TEST_F(SourceReplicasTest, ClosingOnPurposeIsNoFailover) {
  const std::string image = File("img", 1 << 20);
  ServerThread a("mem0", image), b("mem0", image);
  SourceReplicas replicas({a.address(), b.address()});
  ASSERT_TRUE(replicas.DialAtStart(kTimeout).ok());
  replicas.ConnectionUp(0);
  replicas.ConnectionDown(0, /*failed=*/false);
  EXPECT_EQ(replicas.current(), 0u);
  EXPECT_EQ(replicas.failovers(), 0u);
  EXPECT_EQ(replicas.Snapshot()[0].state, SourceReplicas::State::kStandby);
}

TEST_F(SourceReplicasTest, NoReplicaAnsweringNamesEveryError) {
  SourceReplicas replicas(
      {*NetAddress::Parse("127.0.0.1:1", false), *NetAddress::Parse("127.0.0.1:2", false)});
  absl::StatusOr<DialedSource> dialed = replicas.DialAtStart(kTimeout);
  ASSERT_FALSE(dialed.ok());
  EXPECT_NE(dialed.status().message().find("no replica answered"), std::string::npos);
  EXPECT_NE(dialed.status().message().find("127.0.0.1:1"), std::string::npos);
  EXPECT_NE(dialed.status().message().find("127.0.0.1:2"), std::string::npos);
}

}  // namespace
}  // namespace lazyram
