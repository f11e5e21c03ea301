#include "daemon/local/qemu_stream_index.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/match.h"
#include "daemon/local/qemu_stream_format.h"
#include "tests/qemu_stream_builder.h"

namespace lazyram {
namespace {

using testing::QemuStreamBuilder;
constexpr uint64_t kPage = 4096;

std::string PageOf(char c) { return std::string(kPage, c); }

class QemuStreamIndexTest : public ::testing::Test {
 protected:
  QemuStreamIndexTest() {
    char tmpl[] = "/tmp/lazyram-stream-XXXXXX";
    int fd = mkstemp(tmpl);
    EXPECT_GE(fd, 0);
    close(fd);
    path_ = tmpl;
  }
  ~QemuStreamIndexTest() override { unlink(path_.c_str()); }

  absl::StatusOr<std::unique_ptr<QemuStreamIndex>> Index(const std::string& bytes) {
    int fd = open(path_.c_str(), O_WRONLY | O_TRUNC);
    EXPECT_EQ(write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
    close(fd);
    return QemuStreamIndex::Open(path_);
  }

  // The bytes a located page reads as.
  std::string Read(const QemuStreamIndex& index, uint32_t region, uint64_t page) {
    const PageLocation loc = index.Locate(region, page);
    switch (loc.kind) {
      case PageLocation::Kind::kZero:
        return std::string(kPage, '\0');
      case PageLocation::Kind::kFill:
        return std::string(kPage, static_cast<char>(loc.fill));
      case PageLocation::Kind::kFile: {
        std::string out(kPage, '\0');
        EXPECT_EQ(pread(loc.fd, out.data(), loc.length, static_cast<off_t>(loc.offset)),
                  static_cast<ssize_t>(loc.length));
        return out;
      }
    }
    return "";
  }

  // A stream of two blocks where pages are sent, re-sent and zeroed over
  // three passes, as a running VM's migration does.
  static QemuStreamBuilder TwoBlocks() {
    QemuStreamBuilder b;
    b.Header().RamStart({{"pc.ram", 8 * kPage}, {"/rom@etc/acpi/tables", 2 * kPage}});
    b.RamPart().Page("pc.ram", 0, PageOf('a')).Page("pc.ram", kPage, PageOf('b'));
    b.Zero("pc.ram", 2 * kPage).Page("/rom@etc/acpi/tables", kPage, PageOf('t'));
    b.Page("pc.ram", 3 * kPage, PageOf('c')).Eos();
    b.RamPart().Page("pc.ram", kPage, PageOf('B')).Zero("pc.ram", 3 * kPage, 0x5a).Eos();
    b.RamPart(/*end=*/true).Zero("pc.ram", 0).Page("pc.ram", 7 * kPage, PageOf('z')).Eos();
    b.Device("timer", std::string(24, '\x01')).Device("cpu", "whatever", 4).End();
    return b;
  }

  std::string path_;
};

TEST_F(QemuStreamIndexTest, IndexesTheLastCopyOfEveryPage) {
  auto index = Index(TwoBlocks().bytes());
  ASSERT_TRUE(index.ok()) << index.status();
  const QemuStreamIndex& ix = **index;
  EXPECT_EQ(ix.machine_name(), "pc-i440fx-7.2");
  ASSERT_EQ(ix.regions().size(), 2u);
  EXPECT_EQ(ix.regions()[0].name, "pc.ram");
  EXPECT_EQ(ix.regions()[0].size, 8 * kPage);
  EXPECT_EQ(ix.regions()[1].name, "%2From@etc%2Facpi%2Ftables");
  EXPECT_EQ(ix.block_names()[1], "/rom@etc/acpi/tables");

  EXPECT_EQ(Read(ix, 0, 0), PageOf('\0'));    // sent, then zeroed
  EXPECT_EQ(Read(ix, 0, 1), PageOf('B'));     // re-sent
  EXPECT_EQ(Read(ix, 0, 2), PageOf('\0'));    // a zero record
  EXPECT_EQ(Read(ix, 0, 3), PageOf('\x5a'));  // a fill record
  EXPECT_EQ(Read(ix, 0, 4), PageOf('\0'));    // never sent
  EXPECT_EQ(Read(ix, 0, 7), PageOf('z'));
  EXPECT_EQ(Read(ix, 1, 0), PageOf('\0'));
  EXPECT_EQ(Read(ix, 1, 1), PageOf('t'));
  EXPECT_EQ(ix.regions()[0].zero_extents,
            (std::vector<protocol::ZeroExtent>{{0, 1}, {2, 1}, {4, 3}}));
  EXPECT_EQ(ix.stats().data_records, 6u);
  EXPECT_EQ(ix.stats().zero_records, 3u);
}

TEST_F(QemuStreamIndexTest, SkipsARawLibvirtHeaderAndRefusesACompressedOne) {
  const std::string xml = "<domain/>";
  std::string head(qemu_stream::kLibvirtHeaderSize, '\0');
  std::memcpy(head.data(), qemu_stream::kLibvirtMagic, qemu_stream::kLibvirtMagicSize);
  uint32_t fields[4] = {2, static_cast<uint32_t>(xml.size()), 1, 0};
  std::memcpy(head.data() + 16, fields, sizeof fields);
  auto index = Index(head + xml + TwoBlocks().bytes());
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(Read(**index, 0, 1), PageOf('B'));

  fields[3] = 3;  // xz
  std::memcpy(head.data() + 16, fields, sizeof fields);
  auto compressed = Index(head + xml + TwoBlocks().bytes());
  ASSERT_FALSE(compressed.ok());
  EXPECT_TRUE(absl::StrContains(compressed.status().message(), "compressed"))
      << compressed.status();

  std::memcpy(head.data(), qemu_stream::kLibvirtPartialMagic, qemu_stream::kLibvirtMagicSize);
  EXPECT_FALSE(Index(head + xml + TwoBlocks().bytes()).ok());
}

TEST_F(QemuStreamIndexTest, EveryTruncationBeforeTheEndMarkerIsAnError) {
  const std::string full = TwoBlocks().bytes();
  const size_t eof_marker = full.rfind(std::string(1, '\0') + "\x06");
  ASSERT_NE(eof_marker, std::string::npos);
  for (size_t len = eof_marker; len < full.size(); ++len) {
    EXPECT_FALSE(Index(full.substr(0, len)).ok()) << "cut in the device description at " << len;
  }
  // Every cut within the headers, then every few bytes through page data.
  for (size_t len = 0; len <= eof_marker; len += len < 512 ? 1 : 7) {
    auto index = Index(full.substr(0, len));
    ASSERT_FALSE(index.ok()) << "a stream cut at byte " << len << " was accepted";
    EXPECT_EQ(index.status().message().find('\n'), absl::string_view::npos);
  }
  auto cut = Index(full.substr(0, full.size() / 2));
  EXPECT_TRUE(absl::StrContains(cut.status().message(), "truncated")) << cut.status();
  EXPECT_TRUE(absl::StrContains(cut.status().message(), path_)) << cut.status();
}

TEST_F(QemuStreamIndexTest, CorruptStreamsAreRefusedWithTheReason) {
  struct Case {
    std::string name;
    std::string bytes;
    std::string mention;
  };
  std::vector<Case> cases;
  cases.push_back({"not a stream", std::string(100, 'x'), "not a QEMU migration stream"});
  {
    QemuStreamBuilder b;
    b.Header().RamStart({{"pc.ram", 4 * kPage}}).RamPart().Be64(0x42);
    cases.push_back({"bad page record", b.bytes(), "corrupt"});
  }
  {
    QemuStreamBuilder b;
    b.Header().RamStart({{"pc.ram", 4 * kPage}}).U8(0x09).Be32(2);
    cases.push_back({"unknown section type", b.bytes(), "unknown section type 0x09"});
  }
  {
    QemuStreamBuilder b;
    b.Header().RamStart({{"pc.ram", 4 * kPage}}).RamPart(true).Page("vga.vram", 0, PageOf('v'));
    cases.push_back({"unknown block", b.bytes(), "vga.vram"});
  }
  {
    QemuStreamBuilder b;
    b.Header()
        .RamStart({{"pc.ram", 4 * kPage}})
        .RamPart(true)
        .Page("pc.ram", 4 * kPage, PageOf('v'));
    cases.push_back({"page past the block", b.bytes(), "past the end"});
  }
  {
    QemuStreamBuilder b;
    b.Header()
        .RamStart({{"pc.ram", 4 * kPage}})
        .RamPart(true)
        .Be64(qemu_stream::kXbzrle)
        .Str("pc.ram");
    cases.push_back({"xbzrle", b.bytes(), "XBZRLE"});
  }
  {
    QemuStreamBuilder b;
    b.Header().RamStart({{"pc.ram", 4 * kPage}}).RamPart(true).Be64(qemu_stream::kEos);
    b.U8(qemu_stream::kFooter).Be32(7);
    cases.push_back({"footer of another section", b.bytes(), "footer"});
  }
  {
    QemuStreamBuilder b;
    b.Header().U8(qemu_stream::kSubsection).Str("configuration/capabilities").Be32(1).Be32(1);
    b.Str("x-ignore-shared").RamStart({{"pc.ram", 4 * kPage}});
    cases.push_back({"x-ignore-shared", b.bytes(), "x-ignore-shared"});
  }
  {
    QemuStreamBuilder b;
    b.Header().Device("timer", "abc").End();
    cases.push_back({"no RAM", b.bytes(), "RAM section"});
  }
  {
    QemuStreamBuilder b;
    b.Header().U8(qemu_stream::kSectionStart).Be32(2).Str("block").Be32(0).Be32(1);
    cases.push_back({"block migration", b.bytes(), "'block'"});
  }
  {
    QemuStreamBuilder b;
    b.Header().RamStart({{"pc.ram", 4 * kPage}}).RamPart(true).Eos().Device("timer", "abc");
    cases.push_back({"device state without an end", b.bytes(), "end-of-stream"});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    auto index = Index(c.bytes);
    ASSERT_FALSE(index.ok());
    EXPECT_TRUE(absl::StrContains(index.status().message(), c.mention)) << index.status();
  }
}

TEST_F(QemuStreamIndexTest, CommandsAreSkippedByTheirLength) {
  QemuStreamBuilder b;
  b.Header().U8(qemu_stream::kCommand).U8(0).U8(3).U8(0).U8(4).Be32(0xdeadbeef);
  b.RamStart({{"pc.ram", 2 * kPage}}).RamPart(true).Page("pc.ram", kPage, PageOf('p')).Eos();
  b.End();
  auto index = Index(b.bytes());
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(Read(**index, 0, 1), PageOf('p'));
}

// Found by tests/fuzz/qemu_stream_fuzzer: a RAMBlock list declaring about
// 2^62 bytes made the indexer allocate its 8-byte-per-page table, which
// threw std::bad_alloc out of `lazyramd mount` (or, under ASan, aborted).
TEST_F(QemuStreamIndexTest, AbsurdRamSizeIsRefusedBeforeAllocating) {
  QemuStreamBuilder b;
  b.Header().RamStart({{"pc.ram", uint64_t{1} << 62}});
  b.RamPart(/*end=*/true).Page("pc.ram", 0, PageOf('a')).Eos().End();
  auto index = Index(b.bytes());
  ASSERT_FALSE(index.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(index.status())) << index.status();
  EXPECT_TRUE(absl::StrContains(index.status().message(), "4611686018427387904 bytes of RAM"))
      << index.status();
}

TEST_F(QemuStreamIndexTest, IndexMemoryLimitIsAParameter) {
  QemuStreamBuilder b;
  b.Header().RamStart({{"pc.ram", 1024 * kPage}});  // 8 KiB of index
  b.RamPart(/*end=*/true).Page("pc.ram", 0, PageOf('a')).Eos().End();
  ASSERT_TRUE(Index(b.bytes()).ok());
  auto refused = QemuStreamIndex::Open(path_, /*max_index_bytes=*/4096);
  EXPECT_TRUE(absl::IsResourceExhausted(refused.status())) << refused.status();
  EXPECT_TRUE(QemuStreamIndex::Open(path_, /*max_index_bytes=*/1 << 20).ok());
}

// Found by tests/fuzz/qemu_stream_fuzzer (UBSan): a target-page-bits of 32
// or more was shifted into the error message, an undefined shift.
TEST_F(QemuStreamIndexTest, HugeTargetPageBitsIsRefusedWithASaneMessage) {
  for (const uint32_t bits : {16u, 96u}) {
    QemuStreamBuilder b;
    b.Header().U8(qemu_stream::kSubsection).Str("configuration/target-page-bits").Be32(1);
    b.Be32(bits).RamStart({{"pc.ram", 4 * kPage}});
    b.RamPart(/*end=*/true).Page("pc.ram", 0, PageOf('a')).Eos().End();
    auto index = Index(b.bytes());
    ASSERT_FALSE(index.ok());
    EXPECT_TRUE(absl::IsInvalidArgument(index.status())) << index.status();
    EXPECT_TRUE(absl::StrContains(index.status().message(), bits == 16 ? "65536-byte target pages"
                                                                       : "2^96-byte target pages"))
        << index.status();
  }
}

// Found by tests/fuzz/qemu_stream_fuzzer: a RAM section whose START had no
// RAMBlock list (just its end marker) indexed as a stream with no regions.
TEST_F(QemuStreamIndexTest, RamSectionWithoutBlockListIsCorrupt) {
  QemuStreamBuilder b;
  b.Header().U8(qemu_stream::kSectionStart).Be32(2).Str("ram").Be32(0).Be32(4).Eos();
  b.RamPart(/*end=*/true).Eos().End();
  auto index = Index(b.bytes());
  ASSERT_FALSE(index.ok());
  EXPECT_TRUE(absl::IsDataLoss(index.status())) << index.status();
  EXPECT_TRUE(absl::StrContains(index.status().message(), "lists no RAMBlocks")) << index.status();
}

}  // namespace
}  // namespace lazyram
