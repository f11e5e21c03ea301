// GuestKernel: where a Linux x86_64 guest's kernel is, found in its
// guest-physical memory without help from the VM's configuration, so that
// views/vmcore.elf can carry what kernel debuggers (drgn, crash,
// makedumpfile) need: the kernel's VMCOREINFO ELF note and PT_LOADs with
// the kernel's virtual addresses.
//
// The search (FindGuestKernel):
//  1. VMCOREINFO note. Linux allocates its note page-aligned
//     (kernel/crash_core.c: alloc_pages_exact) and fills it at boot: an
//     Elf64_Nhdr {n_namesz 11, n_descsz <= 4096, n_type 0}, "VMCOREINFO\0"
//     padded to 12 bytes, then text lines "KEY=value\n" starting with
//     "OSRELEASE=". Only page starts are looked at, from the top of RAM
//     down (or just the address a caller names, e.g. from QEMU's
//     vmcoreinfo device), in 1 MiB reads: all of RAM above the note is
//     read (for a lazy source: fetched), all of it when there is none.
//  2. Each candidate is checked against the memory it was found in: its
//     text must hold OSRELEASE=, PAGESIZE=4096, SYMBOL(init_uts_ns),
//     OFFSET(uts_namespace.name), NUMBER(phys_base) and SYMBOL(init_top_pgt)
//     (or swapper_pg_dir), and init_uts_ns.name.release, read at
//     __pa(init_uts_ns) = SYMBOL - __START_KERNEL_map + phys_base, must
//     equal OSRELEASE. Stale copies, the bare text buffer (no header) and
//     notes of another boot fail this check and are counted as rejected;
//     the first candidate that passes wins.
//  3. The kernel image mapping: from the 2 MiB block holding SYMBOL(_stext)
//     (else init_uts_ns) down and up while the page tables (init_top_pgt,
//     4- or 5-level) map it linearly to phys_base + v - __START_KERNEL_map.
//  4. The direct map (page_offset_base, randomized with KASLR): the lowest
//     PUD-aligned kernel-half address (4-level paging only) that the page
//     tables map to guest-physical 0 and, at the start and middle of every
//     RAM range, linearly onward.
// No note: kNotFound, saying how much was searched. Found but 3 or 4 fail:
// the kernel is returned with what is missing in `message`.
#ifndef LAZYRAM_DAEMON_FORENSICS_GUEST_KERNEL_H_
#define LAZYRAM_DAEMON_FORENSICS_GUEST_KERNEL_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "daemon/forensics/guest_layout.h"

namespace lazyram {

// The text of a VMCOREINFO note: KEY=value lines.
class Vmcoreinfo {
 public:
  static absl::StatusOr<Vmcoreinfo> Parse(absl::string_view text);

  const std::string& text() const { return text_; }
  std::optional<std::string> Get(absl::string_view key) const;
  // SYMBOL(name) (hex), OFFSET(name) / SIZE(name) / NUMBER(name) (decimal),
  // KERNELOFFSET (hex).
  std::optional<uint64_t> Symbol(absl::string_view name) const;
  std::optional<uint64_t> Offset(absl::string_view name) const;
  std::optional<int64_t> Number(absl::string_view name) const;
  std::optional<uint64_t> KernelOffset() const;
  std::string OsRelease() const { return Get("OSRELEASE").value_or(""); }

 private:
  std::string text_;
  std::map<std::string, std::string, std::less<>> values_;
};

struct VirtualMapping {
  uint64_t vaddr = 0;
  uint64_t paddr = 0;
  uint64_t size = 0;
  friend bool operator==(const VirtualMapping&, const VirtualMapping&) = default;
};

struct KernelSearchStats {
  uint64_t pages_examined = 0;    // page starts looked at
  uint64_t pages_known_zero = 0;  // of those, not read: the source says zero
  uint64_t bytes_read = 0;        // guest memory read (a lazy source fetches it)
  int candidates = 0;             // note headers seen
  int rejected = 0;               // of those, failed the check
  std::string last_rejection;     // why the last one failed
  absl::Duration took;
};

struct GuestKernel {
  uint64_t note_paddr = 0;
  std::string note;  // the whole ELF note as found: header, name, text, padding
  Vmcoreinfo info;
  std::string method;  // "memory-scan" or "vmcoreinfo-device"
  uint64_t phys_base = 0;
  uint64_t kaslr_offset = 0;
  uint64_t pgd_paddr = 0;  // init_top_pgt
  int paging_levels = 4;
  std::optional<uint64_t> page_offset_base;
  std::optional<VirtualMapping> kernel_image;
  // Kernel image first, then the direct map per RAM range (clipped to RAM).
  std::vector<VirtualMapping> mappings;
  std::string message;  // what could not be found, or empty
  KernelSearchStats stats;
};

constexpr uint64_t kStartKernelMap = 0xffffffff80000000ULL;

// Reads guest-physical memory: `out.size()` bytes at `paddr` (holes read
// zero).
using PhysReader = absl::FunctionRef<absl::Status(uint64_t paddr, std::span<uint8_t> out)>;

struct KernelSearchOptions {
  // Look only here (a note address from QEMU's vmcoreinfo device).
  std::optional<uint64_t> note_paddr;
  std::string method = "memory-scan";
  uint64_t chunk = uint64_t{1} << 20;  // read size of the scan
  // Pages known to be zero (holes of the source): not read. May be null.
  std::function<bool(uint64_t paddr)> known_zero;
};

absl::StatusOr<GuestKernel> FindGuestKernel(const GuestLayout& layout, PhysReader read,
                                            const KernelSearchOptions& options = {});

// Walks the page tables rooted at `pgd_paddr`; nullopt when not mapped.
std::optional<uint64_t> TranslateVirtual(PhysReader read, uint64_t pgd_paddr, int levels,
                                         uint64_t vaddr);

// The ELF note (namesz/descsz/type header, name, 4-byte padded desc).
std::string ElfNote(absl::string_view name, uint32_t type, absl::string_view desc);

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_FORENSICS_GUEST_KERNEL_H_
