#include "daemon/local/qemu_stream_devices.h"

#include <gtest/gtest.h>

#include <string>

#include "daemon/local/qemu_stream_format.h"

namespace lazyram {
namespace {

namespace qs = qemu_stream;

std::string Be(uint64_t v, int n) {
  std::string out;
  for (int i = n - 1; i >= 0; --i) out.push_back(static_cast<char>(v >> (8 * i)));
  return out;
}

std::string Header(const std::string& name, uint32_t instance, uint32_t id) {
  return std::string(1, static_cast<char>(qs::kSectionFull)) + Be(id, 4) +
         std::string(1, static_cast<char>(name.size())) + name + Be(instance, 4) + Be(1, 4);
}

std::string Footer(uint32_t id) {
  return std::string(1, static_cast<char>(qs::kFooter)) + Be(id, 4);
}

std::string Segment(uint32_t selector, uint64_t base, uint32_t limit, uint32_t flags) {
  return Be(selector, 4) + Be(base, 8) + Be(limit, 4) + Be(flags, 4);
}

constexpr char kSegStruct[] =
    R"({"vmsd_name":"segment","version":1,"fields":[{"name":"selector","type":"uint32","size":4},)"
    R"({"name":"base","type":"uint64","size":8},{"name":"limit","type":"uint32","size":4},)"
    R"({"name":"flags","type":"uint32","size":4}]})";

// A timer (with a subsection), a cpu and a vmcoreinfo device, as QEMU 7.2
// writes them, and their description.
struct Stream {
  std::string sections;
  std::string vmdesc;
};

Stream Build(bool vmcoreinfo_set = true) {
  Stream s;
  s.sections += Header("timer", 0, 1) + Be(7, 8) + std::string(1, qs::kSubsection) +
                std::string(1, 10) + "timer/xtra" + Be(1, 4) + Footer(1);
  s.sections += Header("cpu", 0, 2);
  for (int i = 0; i < 16; ++i) s.sections += Be(0x1000 + i, 8);
  s.sections += Be(0xffffffff81234567ULL, 8) + Be(0x246, 8) + Be(0x11, 4);
  for (int i = 0; i < 6; ++i) s.sections += Segment(0x10 + i, 0x100 * i, 0xffff, 0xa09b00);
  s.sections += Segment(0, 0, 0, 0) + Segment(0x40, 0xfffffe0000003000ULL, 0x4087, 0x8b00) +
                Segment(0, 0xfffffe0000001000ULL, 0x7f, 0) +
                Segment(0, 0xfffffe0000000000ULL, 0xfff, 0);
  s.sections += Be(0x80050033, 8) + Be(0x1234, 8) + Be(0x26ac000, 8) + Be(0x3506f0, 8);
  s.sections += Be(0xffff888000000000ULL, 8) + Footer(2);
  s.sections += Header("vmcoreinfo", 0, 3) + Be(vmcoreinfo_set ? 1 : 0, 1) + Be(0, 2) + Be(1, 2) +
                Be(0x1024, 4) + Be(0x1f310000, 8) + Footer(3);
  s.vmdesc =
      std::string(R"({"page_size":4096,"devices":[)") +
      R"({"name":"timer","instance_id":0,"vmsd_name":"timer","version":2,)"
      R"("fields":[{"name":"ticks","type":"int64","size":8}],)"
      R"("subsections":[{"vmsd_name":"timer/xtra","version":1,"fields":[]}]},)" +
      R"({"name":"cpu","instance_id":0,"vmsd_name":"cpu","version":12,"fields":[)"
      R"({"name":"env.regs","array_len":16,"type":"uint64","size":8},)"
      R"({"name":"env.eip","type":"uint64","size":8},)"
      R"({"name":"env.eflags","type":"uint64","size":8},)"
      R"({"name":"env.hflags","type":"uint32","size":4},)"
      R"({"name":"env.segs","array_len":6,"type":"struct","struct":)" +
      kSegStruct + R"(,"size":20},)" + R"({"name":"env.ldt","type":"struct","struct":)" +
      kSegStruct + R"(,"size":20},)" + R"({"name":"env.tr","type":"struct","struct":)" +
      kSegStruct + R"(,"size":20},)" + R"({"name":"env.gdt","type":"struct","struct":)" +
      kSegStruct + R"(,"size":20},)" + R"({"name":"env.idt","type":"struct","struct":)" +
      kSegStruct + R"(,"size":20},)" +
      R"({"name":"env.cr[0]","type":"uint64","size":8},)"
      R"({"name":"env.cr[2]","type":"uint64","size":8},)"
      R"({"name":"env.cr[3]","type":"uint64","size":8},)"
      R"({"name":"env.cr[4]","type":"uint64","size":8},)"
      R"({"name":"env.kernelgsbase","type":"uint64","size":8}]},)"
      R"({"name":"vmcoreinfo","instance_id":0,"vmsd_name":"vmcoreinfo","version":1,"fields":[)"
      R"({"name":"has_vmcoreinfo","type":"bool","size":1},)"
      R"({"name":"vmcoreinfo.host_format","type":"uint16","size":2},)"
      R"({"name":"vmcoreinfo.guest_format","type":"uint16","size":2},)"
      R"({"name":"vmcoreinfo.size","type":"uint32","size":4},)"
      R"({"name":"vmcoreinfo.paddr","type":"uint64","size":8}]}]})";
  return s;
}

TEST(QemuStreamDevicesTest, ReadsCpuRegistersAndTheVmcoreinfoDevice) {
  const Stream s = Build();
  absl::StatusOr<StreamDevices> d = ParseStreamDevices(s.sections, s.vmdesc);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->sections, 3);
  ASSERT_EQ(d->cpus.size(), 1u);
  const X86CpuState& c = d->cpus[0];
  EXPECT_EQ(c.regs[0], 0x1000u);
  EXPECT_EQ(c.regs[15], 0x100fu);
  EXPECT_EQ(c.rip, 0xffffffff81234567ULL);
  EXPECT_EQ(c.rflags, 0x246u);
  EXPECT_EQ(c.segs[1].selector, 0x11u);
  EXPECT_EQ(c.segs[5].base, 0x500u);
  EXPECT_EQ(c.segs[5].limit, 0xffffu);
  EXPECT_EQ(c.segs[5].flags, 0xa09b00u);
  EXPECT_EQ(c.tr.base, 0xfffffe0000003000ULL);
  EXPECT_EQ(c.idt.limit, 0xfffu);
  EXPECT_EQ(c.cr[0], 0x80050033u);
  EXPECT_EQ(c.cr[3], 0x26ac000u);
  EXPECT_EQ(c.cr[4], 0x3506f0u);
  EXPECT_EQ(c.kernel_gs_base, 0xffff888000000000ULL);
  ASSERT_TRUE(d->vmcoreinfo_paddr.has_value());
  EXPECT_EQ(*d->vmcoreinfo_paddr, 0x1f310000u);
}

TEST(QemuStreamDevicesTest, AnUnsetVmcoreinfoDeviceNamesNoAddress) {
  const Stream s = Build(/*vmcoreinfo_set=*/false);
  absl::StatusOr<StreamDevices> d = ParseStreamDevices(s.sections, s.vmdesc);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_FALSE(d->vmcoreinfo_paddr.has_value());
}

TEST(QemuStreamDevicesTest, ADescriptionThatDoesNotMatchIsAnError) {
  Stream s = Build();
  // One byte more in the timer: the cpu section is not where it should be.
  s.sections.insert(s.sections.begin() + 20, 'x');
  absl::StatusOr<StreamDevices> d = ParseStreamDevices(s.sections, s.vmdesc);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("subsection 'timer/xtra'"), std::string::npos) << d.status();
  EXPECT_FALSE(ParseStreamDevices(Build().sections, "{\"devices\": 3}").ok());
  EXPECT_FALSE(ParseStreamDevices(Build().sections, "not json").ok());
  EXPECT_FALSE(ParseStreamDevices(Build().sections.substr(0, 100), Build().vmdesc).ok());
  // Sizes that would overflow, or that run past the end.
  std::string huge = Build().vmdesc;
  huge.replace(huge.find(R"("name":"ticks","type":"int64","size":8)"), 38,
               R"("name":"ticks","type":"int64","size":18446744073709551615)");
  EXPECT_FALSE(ParseStreamDevices(Build().sections, huge).ok());
}

TEST(QemuStreamDevicesTest, AFieldSmallerThanItsUseReadsNothingBeyondIt) {
  // env.segs described (and sent) as 6 x 4 bytes: the segments read as far
  // as the field goes, not into the next field.
  Stream s = Build();
  const size_t segs = s.vmdesc.find(R"({"name":"env.segs")");
  const size_t end = s.vmdesc.find(R"({"name":"env.ldt")");
  s.vmdesc.replace(segs, end - segs,
                   R"({"name":"env.segs","array_len":6,"type":"uint32","size":4},)");
  // Drop 16 of each 20 bytes of the six segments from the stream.
  const size_t at = s.sections.find(Segment(0x10, 0, 0xffff, 0xa09b00));
  ASSERT_NE(at, std::string::npos);
  std::string cut;
  for (int i = 0; i < 6; ++i) cut += s.sections.substr(at + 20 * i, 4);
  s.sections.replace(at, 120, cut);
  absl::StatusOr<StreamDevices> d = ParseStreamDevices(s.sections, s.vmdesc);
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->cpus.size(), 1u);
  // Read as 20-byte segments, but only within the field's 24 bytes.
  EXPECT_EQ(d->cpus[0].segs[0].selector, 0x10u);
  EXPECT_EQ(d->cpus[0].segs[0].base, 0x0000001100000012ULL);
  EXPECT_EQ(d->cpus[0].segs[1].selector, 0x15u);
  EXPECT_EQ(d->cpus[0].segs[1].base, 0u);  // past the field
  EXPECT_EQ(d->cpus[0].segs[5].selector, 0u);
  EXPECT_EQ(d->cpus[0].tr.base, 0xfffffe0000003000ULL);
}

}  // namespace
}  // namespace lazyram
