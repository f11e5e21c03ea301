// The basic promise: a served image mounts, reads back byte for byte, and
// nothing is fetched before it is read.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "gtest/gtest.h"
#include "tests/test_env.h"

namespace lazyram::testing {
namespace {

constexpr uint64_t kSize = 16 << 20;

TEST(MountBasic, ReadsBackTheImageLazily) {
  TempDir dir;
  std::vector<uint8_t> image = WriteImage(dir.Sub("img"), kSize, 1);
  auto server = PageServerProcess::Start({"mem0=" + dir.Sub("img")});
  ASSERT_TRUE(server.ok()) << server.status();
  auto mount = MountProcess::Start(dir, {.source = (*server)->url()});
  ASSERT_TRUE(mount.ok()) << mount.status();

  auto before = (*mount)->RegionStatus("mem0");
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ((*before)["size"], kSize);
  EXPECT_EQ((*before)["bytes_fetched"], 0);

  const std::string file = (*mount)->File("mem0");
  int code = RunInChild([&] {
    int fd = open(file.c_str(), O_RDONLY);
    if (fd < 0) return 1;
    void* p = mmap(nullptr, kSize, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return 2;
    return std::memcmp(p, image.data(), kSize) == 0 ? 0 : 3;
  });
  EXPECT_EQ(code, 0);
  auto after = (*mount)->RegionStatus("mem0");
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE((*after)["complete"]);
  // Every fourth MiB is zero: those pages never cross the wire.
  EXPECT_EQ((*after)["bytes_fetched"], kSize * 3 / 4);
  EXPECT_EQ((*mount)->Unmount(), 0);
}

}  // namespace
}  // namespace lazyram::testing
