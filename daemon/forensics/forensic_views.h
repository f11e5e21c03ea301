// ForensicViews: what the mount's views/ folder shows, built from the
// mount's regions (a RegionSet) and the guest's memory layout (GuestLayout):
//   physmem.raw   the guest-physical address space; holes read zero
//   physmem.lime  LiME: per RAM range a 32-byte header, then its bytes
//   vmcore.elf    ELF64 ET_CORE: one PT_NOTE, one PT_LOAD per RAM range
//                 (p_paddr = guest-physical address), like QEMU's
//                 dump-guest-memory; each range's bytes start page-aligned.
//                 When a Linux guest kernel is found (GuestKernel, searched
//                 once, when vmcore.elf's header is first read), the
//                 PT_NOTE also holds its VMCOREINFO note, and more PT_LOADs
//                 follow the physical ones, pointing at the same file
//                 bytes: the kernel image and the direct map at their
//                 virtual addresses, as /proc/vmcore has them. The header
//                 has room for them either way: the file's size and data
//                 offsets do not depend on the search. With CPU state
//                 (Options::cpus) the PT_NOTE has QEMU's CPU notes too.
//   manifest.json regions, sizes, layout, source, SHA-256 per hashed region,
//                 the guest kernel found (or why not)
// The three memory views exist only when the layout is known: the machine
// (--machine, else the stream's machine type) and the main RAM region
// (FindMainRam) with its size. docs/forensics.md describes the formats.
//
// Views are built when asked for and cached while the main RAM region
// keeps its size. Thread-safety: every method may be called from any
// thread. The RegionSet and hasher must outlive this object.
#ifndef LAZYRAM_DAEMON_FORENSICS_FORENSIC_VIEWS_H_
#define LAZYRAM_DAEMON_FORENSICS_FORENSIC_VIEWS_H_

#include <array>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "daemon/core/cpu_state.h"
#include "daemon/core/region_hasher.h"
#include "daemon/core/region_set.h"
#include "daemon/forensics/guest_kernel.h"
#include "daemon/forensics/guest_layout.h"
#include "daemon/forensics/memory_view.h"

namespace lazyram {

class ForensicViews {
 public:
  enum class Kind { kPhysmemRaw = 0, kPhysmemLime, kVmcoreElf, kManifest };
  static constexpr int kNumKinds = 4;
  static constexpr std::array<absl::string_view, kNumKinds> kNames = {
      "physmem.raw", "physmem.lime", "vmcore.elf", "manifest.json"};

  // LiME range header (lime.h): little-endian on disk.
  static constexpr uint32_t kLimeMagic = 0x4C694D45;
  static constexpr uint32_t kLimeVersion = 1;
  static constexpr size_t kLimeHeaderSize = 32;
  // The PT_NOTE holds one note, owner "LAZYRAM", of this type, whose
  // descriptor is the layout as JSON (tools skip notes they do not know).
  static constexpr uint32_t kNoteType = 0x4c52;

  struct Options {
    std::optional<MachineType> machine;  // --machine; wins over qemu_machine
    std::string qemu_machine;            // from a migration stream, or empty
    std::string source;                  // "qemu-stream:///x", "tcp://...", or empty
    bool read_only = false;
    // Where QEMU's vmcoreinfo device says the guest's VMCOREINFO note is
    // (from a migration stream); the search looks there first.
    std::optional<uint64_t> vmcoreinfo_paddr;
    // The vCPUs' registers (from a migration stream): vmcore.elf gets an
    // NT_PRSTATUS and a QEMU note per vCPU, as dump-guest-memory writes.
    std::vector<X86CpuState> cpus;
  };

  // `regions` and `hasher` (whose results the manifest reports) must
  // outlive the views.
  ForensicViews(const RegionSet* regions, RegionHasher* hasher, Options options);
  ForensicViews(const ForensicViews&) = delete;
  ForensicViews& operator=(const ForensicViews&) = delete;

  // The machine type in force, if any.
  std::optional<MachineType> machine() const;
  // The layout and its main RAM region, when both are known now.
  std::optional<GuestLayout> Layout(Region** main_ram) const;
  // A view; null for a memory view while the layout is unknown. The
  // manifest is built afresh on every call.
  std::shared_ptr<const MemoryView> View(Kind kind) const;
  std::string ManifestJson() const;

  // Builders, exposed for tests.
  static std::shared_ptr<MemoryView> BuildPhysmemRaw(const GuestLayout& layout, Region* ram);
  static std::shared_ptr<MemoryView> BuildLime(const GuestLayout& layout, Region* ram);
  // `kernel` (may be null) adds its VMCOREINFO note and virtual PT_LOADs.
  static std::shared_ptr<MemoryView> BuildElf(const GuestLayout& layout, Region* ram,
                                              const std::string& note,
                                              const GuestKernel* kernel = nullptr,
                                              const std::vector<X86CpuState>& cpus = {});
  // The notes of one vCPU, as QEMU 7.2's dump-guest-memory writes them
  // (target/i386/arch_dump.c): "CORE" NT_PRSTATUS (struct elf_prstatus,
  // pr_pid = index + 1) and "QEMU" (QEMUCPUState, type 0).
  static std::string PrstatusNote(const X86CpuState& cpu);
  static std::string QemuCpuNote(const X86CpuState& cpu);

  // The guest kernel search's outcome for the current layout: runs it
  // (blocking, reading guest memory) if it has not run; cached after.
  // Null without a layout.
  struct KernelSearch {
    absl::StatusOr<GuestKernel> kernel = absl::UnknownError("not searched");
    absl::Duration took;
  };
  std::shared_ptr<const KernelSearch> Kernel() const;
  // The search's outcome if it has run (null if not yet): never waits.
  std::shared_ptr<const KernelSearch> KernelIfSearched() const;

 private:
  struct Cache {
    Region* ram = nullptr;
    uint64_t size = 0;
    std::array<std::shared_ptr<const MemoryView>, 3> views;
  };
  std::string LayoutNote(const GuestLayout& layout, const Region& ram) const;

  const RegionSet* const regions_;
  RegionHasher* const hasher_;
  const Options options_;
  std::shared_ptr<const KernelSearch> SearchKernel(const GuestLayout& layout, Region* ram,
                                                   std::shared_ptr<const MemoryView> raw) const;
  // vmcore.elf whose header is made on first read, asking `kernel` then.
  static std::shared_ptr<MemoryView> BuildElfWith(const GuestLayout& layout, Region* ram,
                                                  const std::string& note,
                                                  const std::vector<X86CpuState>& cpus,
                                                  absl::AnyInvocable<const GuestKernel*()> kernel);

  mutable absl::Mutex mu_;
  mutable Cache cache_ ABSL_GUARDED_BY(mu_);
  // Held while searching (others wait for the one search); never taken
  // under mu_, nor mu_ under it.
  mutable absl::Mutex search_mu_;
  struct SearchKey {
    Region* ram = nullptr;
    uint64_t size = 0;
  };
  mutable SearchKey search_key_ ABSL_GUARDED_BY(search_mu_);
  mutable std::shared_ptr<const KernelSearch> search_ ABSL_GUARDED_BY(search_mu_);
  // The last finished search, for the manifest (a leaf lock).
  mutable absl::Mutex done_mu_;
  mutable std::shared_ptr<const KernelSearch> searched_ ABSL_GUARDED_BY(done_mu_);
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_FORENSICS_FORENSIC_VIEWS_H_
