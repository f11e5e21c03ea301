#include "daemon/forensics/guest_layout.h"

#include <gtest/gtest.h>

namespace lazyram {
namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kMiB = uint64_t{1} << 20;

TEST(GuestLayout, PcSplitsAtThreeGigabytesFromThreeAndAHalf) {
  const GuestLayout four = GuestLayout::ForX86(MachineType::kPc, 4 * kGiB);
  ASSERT_EQ(four.ranges().size(), 2u);
  EXPECT_EQ(four.ranges()[0], (GuestRange{0, 0, 3 * kGiB}));
  EXPECT_EQ(four.ranges()[1], (GuestRange{4 * kGiB, 3 * kGiB, 1 * kGiB}));
  EXPECT_EQ(four.physical_end(), 5 * kGiB);

  const GuestLayout split = GuestLayout::ForX86(MachineType::kPc, 0xE0000000);
  ASSERT_EQ(split.ranges().size(), 2u);
  EXPECT_EQ(split.ranges()[1], (GuestRange{4 * kGiB, 3 * kGiB, 512 * kMiB}));

  const GuestLayout below = GuestLayout::ForX86(MachineType::kPc, 0xE0000000 - 4096);
  ASSERT_EQ(below.ranges().size(), 1u);
  EXPECT_EQ(below.ranges()[0], (GuestRange{0, 0, 0xE0000000 - 4096}));
}

TEST(GuestLayout, Q35SplitsAtTwoGigabytesFromTwoAndThreeQuarters) {
  const GuestLayout four = GuestLayout::ForX86(MachineType::kQ35, 4 * kGiB);
  ASSERT_EQ(four.ranges().size(), 2u);
  EXPECT_EQ(four.ranges()[0], (GuestRange{0, 0, 2 * kGiB}));
  EXPECT_EQ(four.ranges()[1], (GuestRange{4 * kGiB, 2 * kGiB, 2 * kGiB}));

  const GuestLayout below = GuestLayout::ForX86(MachineType::kQ35, 0xB0000000 - 4096);
  ASSERT_EQ(below.ranges().size(), 1u);
  EXPECT_EQ(GuestLayout::ForX86(MachineType::kQ35, 0xB0000000).ranges().size(), 2u);
  EXPECT_EQ(GuestLayout::ForX86(MachineType::kQ35, 256 * kMiB).physical_end(), 256 * kMiB);
}

TEST(GuestLayout, ParsesFlagsAndQemuMachineNames) {
  EXPECT_EQ(*GuestLayout::ParseMachine("pc"), MachineType::kPc);
  EXPECT_EQ(*GuestLayout::ParseMachine("pc-i440fx-7.2"), MachineType::kPc);
  EXPECT_EQ(*GuestLayout::ParseMachine("pc-1.1"), MachineType::kPc);
  EXPECT_EQ(*GuestLayout::ParseMachine("q35"), MachineType::kQ35);
  EXPECT_EQ(*GuestLayout::ParseMachine("pc-q35-7.2"), MachineType::kQ35);
  for (const char* bad : {"microvm", "isapc", "", "pc-", "virt"}) {
    EXPECT_FALSE(GuestLayout::ParseMachine(bad).ok()) << bad;
  }
}

TEST(GuestLayout, MainRamIsPcRamElseTheLargest) {
  EXPECT_EQ(FindMainRam({"pc.bios", "pc.ram", "vga.vram"}, {256 << 10, 64 * kMiB, 128 * kMiB}), 1u);
  EXPECT_EQ(FindMainRam({"pc.bios", "mem0", "vga.vram"}, {256 << 10, 4 * kGiB, 16 * kMiB}), 1u);
  EXPECT_EQ(FindMainRam({"a", "b"}, {4096, 4096}), 0u);
  EXPECT_FALSE(FindMainRam({}, {}).has_value());
  EXPECT_FALSE(FindMainRam({"empty"}, {0}).has_value());
}

}  // namespace
}  // namespace lazyram
