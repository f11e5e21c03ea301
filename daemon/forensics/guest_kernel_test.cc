#include "daemon/forensics/guest_kernel.h"

#include <elf.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "daemon/forensics/forensic_views.h"

namespace lazyram {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kRam = 64 * kMiB;
constexpr uint64_t kPhysBase = 0x400000;
constexpr uint64_t kKaslr = 0xc00000;
constexpr uint64_t kText = 0xffffffff81000000ULL + kKaslr;  // phys 32 MiB
constexpr uint64_t kUts = kText + 0x100000;
constexpr uint64_t kPgd = kText + 0x200000;
constexpr uint64_t kPageOffsetBase = 0xffff9b2a80000000ULL;
constexpr uint64_t kNameOffset = 4;
constexpr uint64_t kRealNote = 48 * kMiB;

uint64_t Pa(uint64_t v) { return v - kStartKernelMap + kPhysBase; }

std::string Info(const std::string& release) {
  return absl::StrFormat(
      "OSRELEASE=%s\nBUILD-ID=0123\nPAGESIZE=4096\nSYMBOL(init_uts_ns)=%x\n"
      "OFFSET(uts_namespace.name)=%d\nSYMBOL(swapper_pg_dir)=%x\nSYMBOL(_stext)=%x\n"
      "NUMBER(phys_base)=%d\nSYMBOL(init_top_pgt)=%x\nNUMBER(pgtable_l5_enabled)=0\n"
      "KERNELOFFSET=%x\n",
      release, kUts, kNameOffset, kPgd, kText + 0x1000, kPhysBase, kPgd, kKaslr);
}

// A 64 MiB pc guest: a KASLR'd kernel image at guest-physical 32 MiB
// (two 2 MiB pages), its page tables, a direct map, init_uts_ns, and
// VMCOREINFO notes: decoys and (optionally) the real one.
class GuestKernelTest : public ::testing::Test {
 protected:
  GuestKernelTest() : layout_(GuestLayout::ForX86(MachineType::kPc, kRam)), mem_(kRam) {
    Put64(Pa(kPgd) + 8 * 511, 0x2201000 | 3);   // PML4[511] -> PDPT
    Put64(0x2201000 + 8 * 510, 0x2202000 | 3);  // PDPT[510] -> PD
    const uint64_t pd = ((kText >> 21) & 511);  // the image's 2 MiB pages
    Put64(0x2202000 + 8 * pd, 0x2000000 | 0x83);
    Put64(0x2202000 + 8 * (pd + 1), 0x2200000 | 0x83);
    Put64(Pa(kPgd) + 8 * ((kPageOffsetBase >> 39) & 511), 0x2203000 | 3);
    Put64(0x2203000 + 8 * ((kPageOffsetBase >> 30) & 511), 0x2204000 | 3);
    for (uint64_t i = 0; i < kRam / (2 * kMiB); ++i) Put64(0x2204000 + 8 * i, i * 2 * kMiB | 0x83);
    std::memcpy(&mem_[Pa(kUts) + kNameOffset + 130], "6.1.0-test", 10);
  }

  void Put64(uint64_t at, uint64_t v) { std::memcpy(&mem_[at], &v, 8); }
  void PutNote(uint64_t at, const std::string& name, const std::string& text) {
    const std::string note = ElfNote(name, 0, text);
    std::memcpy(&mem_[at], note.data(), note.size());
  }

  absl::StatusOr<GuestKernel> Find(KernelSearchOptions options = {}) {
    auto read = [this](uint64_t paddr, std::span<uint8_t> out) -> absl::Status {
      for (size_t i = 0; i < out.size(); ++i) {
        out[i] = paddr + i < mem_.size() ? mem_[paddr + i] : 0;
      }
      return absl::OkStatus();
    };
    return FindGuestKernel(layout_, read, options);
  }

  void AddDecoys() {
    const std::string bare = Info("6.1.0-test");  // the text buffer: no header
    std::memcpy(&mem_[1 * kMiB], bare.data(), bare.size());
    PutNote(60 * kMiB, "VMCOREINFO", Info("5.10.0-other"));        // another kernel's
    PutNote(2 * kMiB, "VMCOREINFX", Info("6.1.0-test"));           // wrong owner
    PutNote(5 * kMiB / 2 + 64, "VMCOREINFO", Info("6.1.0-test"));  // not page-aligned
  }

  GuestLayout layout_;
  std::vector<uint8_t> mem_;
};

TEST_F(GuestKernelTest, FindsTheNoteAmongDecoys) {
  AddDecoys();
  PutNote(kRealNote, "VMCOREINFO", Info("6.1.0-test"));
  absl::StatusOr<GuestKernel> k = Find();
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(k->note_paddr, kRealNote);
  EXPECT_EQ(k->method, "memory-scan");
  EXPECT_EQ(k->info.OsRelease(), "6.1.0-test");
  EXPECT_EQ(k->kaslr_offset, kKaslr);
  EXPECT_EQ(k->phys_base, kPhysBase);
  EXPECT_EQ(k->pgd_paddr, Pa(kPgd));
  EXPECT_EQ(k->stats.candidates, 2);
  EXPECT_EQ(k->stats.rejected, 1);
  EXPECT_NE(k->stats.last_rejection.find("5.10.0-other"), std::string::npos)
      << k->stats.last_rejection;
  EXPECT_EQ(k->stats.pages_examined, (kRam - kRealNote) / 4096);
  EXPECT_EQ(k->note, ElfNote("VMCOREINFO", 0, Info("6.1.0-test")));
  ASSERT_TRUE(k->page_offset_base.has_value());
  EXPECT_EQ(*k->page_offset_base, kPageOffsetBase);
  EXPECT_EQ(k->message, "");
  const std::vector<VirtualMapping> want = {{kText, 32 * kMiB, 4 * kMiB},
                                            {kPageOffsetBase, 0, kRam}};
  EXPECT_EQ(k->mappings, want);
  EXPECT_EQ(TranslateVirtual(
                [this](uint64_t p, std::span<uint8_t> out) {
                  std::memcpy(out.data(), &mem_[p], out.size());
                  return absl::OkStatus();
                },
                Pa(kPgd), 4, kPageOffsetBase + 0x123456),
            0x123456u);
}

TEST_F(GuestKernelTest, NoNoteIsAClearNotFound) {
  AddDecoys();
  absl::StatusOr<GuestKernel> k = Find();
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.status().code(), absl::StatusCode::kNotFound);
  const std::string msg(k.status().message());
  EXPECT_NE(msg.find("no Linux VMCOREINFO note in guest memory"), std::string::npos) << msg;
  EXPECT_NE(msg.find("16384 page starts examined"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1 note header(s) found, all rejected"), std::string::npos) << msg;
  EXPECT_NE(msg.find("init_uts_ns.name.release holds \"6.1.0-test\""), std::string::npos) << msg;
}

TEST_F(GuestKernelTest, KnownZeroPagesAreNotRead) {
  PutNote(kRealNote, "VMCOREINFO", Info("6.1.0-test"));
  KernelSearchOptions opts;
  opts.known_zero = [](uint64_t paddr) { return paddr >= 56 * kMiB; };  // the top 8 MiB
  absl::StatusOr<GuestKernel> k = Find(opts);
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(k->stats.pages_known_zero, 8 * kMiB / 4096);
  EXPECT_EQ(k->stats.pages_examined, (kRam - kRealNote) / 4096);
}

TEST_F(GuestKernelTest, EmptyMemoryHasNoKernel) {
  absl::StatusOr<GuestKernel> k = Find();
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(k.status().message().find("0 note header(s) found"), std::string::npos);
}

TEST_F(GuestKernelTest, DeviceAddressIsCheckedToo) {
  AddDecoys();
  PutNote(kRealNote, "VMCOREINFO", Info("6.1.0-test"));
  KernelSearchOptions opts;
  opts.note_paddr = kRealNote;
  opts.method = "vmcoreinfo-device";
  absl::StatusOr<GuestKernel> k = Find(opts);
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_EQ(k->method, "vmcoreinfo-device");
  EXPECT_EQ(k->stats.pages_examined, 0u);
  opts.note_paddr = 60 * kMiB;  // the other kernel's note
  EXPECT_EQ(Find(opts).status().code(), absl::StatusCode::kNotFound);
  opts.note_paddr = 7 * kMiB;  // nothing there
  EXPECT_EQ(Find(opts).status().code(), absl::StatusCode::kNotFound);
  opts.note_paddr = 1ULL << 40;  // outside RAM
  EXPECT_EQ(Find(opts).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(GuestKernelTest, UnmappedDirectMapIsReportedNotGuessed) {
  PutNote(kRealNote, "VMCOREINFO", Info("6.1.0-test"));
  Put64(Pa(kPgd) + 8 * ((kPageOffsetBase >> 39) & 511), 0);
  absl::StatusOr<GuestKernel> k = Find();
  ASSERT_TRUE(k.ok()) << k.status();
  EXPECT_FALSE(k->page_offset_base.has_value());
  EXPECT_NE(k->message.find("no direct map"), std::string::npos) << k->message;
  ASSERT_EQ(k->mappings.size(), 1u);
  EXPECT_EQ(k->mappings[0].vaddr, kText);
}

TEST(VmcoreinfoTest, ParsesValues) {
  absl::StatusOr<Vmcoreinfo> v = Vmcoreinfo::Parse(
      "OSRELEASE=6.1\nSYMBOL(x)=ffffffff81000000\nOFFSET(a.b)=16\nNUMBER(n)=-1\n"
      "KERNELOFFSET=1e000000\n");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->OsRelease(), "6.1");
  EXPECT_EQ(v->Symbol("x"), 0xffffffff81000000ULL);
  EXPECT_EQ(v->Offset("a.b"), 16u);
  EXPECT_EQ(v->Number("n"), -1);
  EXPECT_EQ(v->KernelOffset(), 0x1e000000u);
  EXPECT_FALSE(v->Symbol("y").has_value());
  EXPECT_FALSE(Vmcoreinfo::Parse("PAGESIZE=4096\n").ok());
  EXPECT_FALSE(Vmcoreinfo::Parse("OSRELEASE=6.1\n\x01\x02").ok());
}

TEST(ElfNoteTest, PadsNameAndDesc) {
  const std::string n = ElfNote("CORE", 1, "abcde");
  ASSERT_EQ(n.size(), 12u + 8 + 8);
  Elf64_Nhdr h;
  std::memcpy(&h, n.data(), sizeof h);
  EXPECT_EQ(h.n_namesz, 5u);
  EXPECT_EQ(h.n_descsz, 5u);
  EXPECT_EQ(h.n_type, 1u);
  EXPECT_EQ(n.substr(12, 5), std::string("CORE\0", 5));
  EXPECT_EQ(n.substr(20, 5), "abcde");
}

// vmcore.elf with a kernel: the notes, then virtual PT_LOADs after the
// physical ones, over the same file bytes.
TEST(BuildElfTest, KernelNoteAndVirtualLoads) {
  const GuestLayout layout = GuestLayout::ForX86(MachineType::kPc, 4ULL << 30);
  GuestKernel k;
  k.note = ElfNote("VMCOREINFO", 0, "OSRELEASE=6.1\n");
  k.mappings = {{kText, 32 * kMiB, 4 * kMiB},
                {kPageOffsetBase, 0, 3ULL << 30},
                {kPageOffsetBase + (4ULL << 30), 4ULL << 30, 1ULL << 30}};
  auto elf = ForensicViews::BuildElf(layout, nullptr, "{}", &k);
  absl::Notification done;
  std::vector<uint8_t> head;
  elf->Read(0, 4096, [&](absl::StatusOr<std::vector<uint8_t>> r) {
    ASSERT_TRUE(r.ok());
    head = *std::move(r);
    done.Notify();
  });
  done.WaitForNotification();
  Elf64_Ehdr eh;
  std::memcpy(&eh, head.data(), sizeof eh);
  ASSERT_EQ(eh.e_phnum, 1 + 2 + 3);
  std::vector<Elf64_Phdr> ph(eh.e_phnum);
  std::memcpy(ph.data(), head.data() + eh.e_phoff, ph.size() * sizeof(Elf64_Phdr));
  EXPECT_EQ(ph[0].p_type, PT_NOTE);
  const std::string notes(reinterpret_cast<const char*>(head.data()) + ph[0].p_offset,
                          ph[0].p_filesz);
  EXPECT_EQ(notes, ElfNote("LAZYRAM", ForensicViews::kNoteType, "{}") + k.note);
  for (int i = 1; i < 3; ++i) EXPECT_EQ(ph[i].p_vaddr, ph[i].p_paddr);
  EXPECT_EQ(ph[1].p_paddr, 0u);
  EXPECT_EQ(ph[2].p_paddr, 4ULL << 30);
  EXPECT_EQ(ph[3].p_vaddr, kText);
  EXPECT_EQ(ph[3].p_paddr, 32 * kMiB);
  EXPECT_EQ(ph[3].p_offset, ph[1].p_offset + 32 * kMiB);
  EXPECT_EQ(ph[3].p_filesz, 4 * kMiB);
  EXPECT_EQ(ph[4].p_offset, ph[1].p_offset);
  EXPECT_EQ(ph[5].p_vaddr, kPageOffsetBase + (4ULL << 30));
  EXPECT_EQ(ph[5].p_offset, ph[2].p_offset);
  EXPECT_EQ(elf->size(), ph[2].p_offset + (1ULL << 30));
  // The same file without a kernel: the same size and data offsets (the
  // header has room for what a kernel adds), fewer PT_LOADs.
  auto plain = ForensicViews::BuildElf(layout, nullptr, "{}", nullptr);
  EXPECT_EQ(plain->size(), elf->size());
  absl::Notification done2;
  plain->Read(0, 4096, [&](absl::StatusOr<std::vector<uint8_t>> r) {
    ASSERT_TRUE(r.ok());
    head = *std::move(r);
    done2.Notify();
  });
  done2.WaitForNotification();
  std::memcpy(&eh, head.data(), sizeof eh);
  EXPECT_EQ(eh.e_phnum, 1 + 2);
  Elf64_Phdr first;
  std::memcpy(&first, head.data() + eh.e_phoff + sizeof first, sizeof first);
  EXPECT_EQ(first.p_offset, ph[1].p_offset);
}

// The CPU notes, laid out as QEMU 7.2's dump-guest-memory writes them.
TEST(CpuNotesTest, PrstatusAndQemuNotes) {
  X86CpuState c;
  c.index = 2;
  for (int i = 0; i < 16; ++i) c.regs[i] = 0x100 + i;  // rax rcx rdx rbx rsp rbp rsi rdi r8..
  c.rip = 0xffffffff81000010ULL;
  c.rflags = 0x246;
  for (int i = 0; i < 6; ++i)
    c.segs[i] = {static_cast<uint32_t>(0x10 + i), 0x1000u * i, 0xfffff, 0};
  c.cr[3] = 0x26ac000;
  c.kernel_gs_base = 0xffff888000000000ULL;

  const std::string pr = ForensicViews::PrstatusNote(c);
  ASSERT_EQ(pr.size(), 12u + 8 + 336);
  Elf64_Nhdr h;
  std::memcpy(&h, pr.data(), sizeof h);
  EXPECT_EQ(h.n_type, static_cast<uint32_t>(NT_PRSTATUS));
  EXPECT_EQ(h.n_descsz, 336u);
  EXPECT_EQ(pr.substr(12, 5), std::string("CORE\0", 5));
  const char* d = pr.data() + 20;
  auto u64 = [](const char* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
  };
  uint32_t pid;
  std::memcpy(&pid, d + 32, 4);
  EXPECT_EQ(pid, 3u);                                    // index + 1
  const char* regs = d + 112;                            // pr_reg
  EXPECT_EQ(u64(regs + 0 * 8), 0x10fu);                  // r15
  EXPECT_EQ(u64(regs + 4 * 8), 0x105u);                  // rbp
  EXPECT_EQ(u64(regs + 5 * 8), 0x103u);                  // rbx
  EXPECT_EQ(u64(regs + 10 * 8), 0x100u);                 // rax
  EXPECT_EQ(u64(regs + 14 * 8), 0x107u);                 // rdi
  EXPECT_EQ(u64(regs + 16 * 8), 0xffffffff81000010ULL);  // rip
  EXPECT_EQ(u64(regs + 17 * 8), 0x11u);                  // cs
  EXPECT_EQ(u64(regs + 18 * 8), 0x246u);                 // eflags
  EXPECT_EQ(u64(regs + 19 * 8), 0x104u);                 // rsp
  EXPECT_EQ(u64(regs + 20 * 8), 0x12u);                  // ss
  EXPECT_EQ(u64(regs + 21 * 8), 0x4000u);                // fs_base
  EXPECT_EQ(u64(regs + 22 * 8), 0x5000u);                // gs_base
  EXPECT_EQ(u64(regs + 26 * 8), 0x15u);                  // gs

  const std::string q = ForensicViews::QemuCpuNote(c);
  std::memcpy(&h, q.data(), sizeof h);
  EXPECT_EQ(h.n_type, 0u);
  EXPECT_EQ(h.n_descsz, 0x1b8u);
  EXPECT_EQ(q.substr(12, 5), std::string("QEMU\0", 5));
  const char* s = q.data() + 20;
  uint32_t version, size;
  std::memcpy(&version, s, 4);
  std::memcpy(&size, s + 4, 4);
  EXPECT_EQ(version, 1u);
  EXPECT_EQ(size, 0x1b8u);
  EXPECT_EQ(u64(s + 8), 0x100u);          // rax
  EXPECT_EQ(u64(s + 8 + 8), 0x103u);      // rbx
  EXPECT_EQ(u64(s + 8 + 6 * 8), 0x104u);  // rsp
  EXPECT_EQ(u64(s + 8 + 16 * 8), c.rip);  // rip
  uint32_t cs_selector;
  std::memcpy(&cs_selector, s + 8 + 18 * 8, 4);  // cs: the first segment
  EXPECT_EQ(cs_selector, 0x11u);
  EXPECT_EQ(u64(s + 8 + 18 * 8 + 10 * 24 + 3 * 8), 0x26ac000u);  // cr[3]
  EXPECT_EQ(u64(s + 0x1b0), c.kernel_gs_base);
}

}  // namespace
}  // namespace lazyram
