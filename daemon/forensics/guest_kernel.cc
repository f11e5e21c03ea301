#include "daemon/forensics/guest_kernel.h"

#include <elf.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace lazyram {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t k2MiB = uint64_t{2} << 20;
constexpr uint64_t k1GiB = uint64_t{1} << 30;
constexpr uint64_t kPteAddr = 0x000ffffffffff000ULL;
constexpr uint64_t kPresent = 1;
constexpr uint64_t kHuge = 1 << 7;
constexpr char kNoteName[] = "VMCOREINFO";  // namesz 11 with the NUL
constexpr size_t kHeaderSize = 12 + 12;     // Nhdr + name padded to 4
constexpr size_t kMaxDesc = 4096;           // VMCOREINFO_BYTES

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

bool InRam(const GuestLayout& layout, uint64_t paddr, uint64_t size) {
  for (const GuestRange& r : layout.ranges()) {
    if (paddr >= r.guest_physical && paddr + size <= r.end()) return true;
  }
  return false;
}

// The descriptor size if `p` (kHeaderSize bytes) is a VMCOREINFO note
// header, else 0.
uint32_t NoteHeader(const uint8_t* p) {
  if (Load<uint32_t>(p) != sizeof kNoteName) return 0;
  const uint32_t descsz = Load<uint32_t>(p + 4);
  if (descsz == 0 || descsz > kMaxDesc) return 0;
  if (Load<uint32_t>(p + 8) != 0) return 0;
  if (std::memcmp(p + 12, kNoteName, sizeof kNoteName) != 0 || p[23] != 0) return 0;
  return descsz;
}

absl::Status ReadCounted(PhysReader read, KernelSearchStats* stats, uint64_t paddr,
                         std::span<uint8_t> out) {
  stats->bytes_read += out.size();
  return read(paddr, out);
}

// Checks a candidate note (its text) against memory; fills `k` on success.
absl::Status Check(const GuestLayout& layout, PhysReader read, absl::string_view text,
                   GuestKernel* k) {
  absl::StatusOr<Vmcoreinfo> info = Vmcoreinfo::Parse(text);
  if (!info.ok()) return info.status();
  const std::optional<std::string> page = info->Get("PAGESIZE");
  if (!page.has_value() || *page != "4096") return absl::NotFoundError("PAGESIZE is not 4096");
  const std::optional<uint64_t> uts = info->Symbol("init_uts_ns");
  const std::optional<uint64_t> name_off = info->Offset("uts_namespace.name");
  const std::optional<int64_t> phys_base = info->Number("phys_base");
  std::optional<uint64_t> pgd = info->Symbol("init_top_pgt");
  if (!pgd.has_value()) pgd = info->Symbol("swapper_pg_dir");
  if (!uts || !name_off || !phys_base || !pgd) {
    return absl::NotFoundError(
        "lacks SYMBOL(init_uts_ns), OFFSET(uts_namespace.name), NUMBER(phys_base) or "
        "SYMBOL(init_top_pgt)");
  }
  const auto pa = [&](uint64_t v) {
    return v - kStartKernelMap + static_cast<uint64_t>(*phys_base);
  };
  if (*uts < kStartKernelMap || *pgd < kStartKernelMap) {
    return absl::NotFoundError("kernel symbols below __START_KERNEL_map");
  }
  // struct new_utsname: sysname[65], nodename[65], release[65], ...
  const uint64_t release_pa = pa(*uts) + *name_off + 2 * 65;
  if (!InRam(layout, release_pa, 65) || !InRam(layout, pa(*pgd), kPage)) {
    return absl::NotFoundError(
        absl::StrFormat("init_uts_ns or init_top_pgt (at guest-physical %#x, %#x) outside RAM",
                        pa(*uts), pa(*pgd)));
  }
  std::vector<uint8_t> release(65);
  if (absl::Status s = ReadCounted(read, &k->stats, release_pa, release); !s.ok()) return s;
  const std::string got(reinterpret_cast<const char*>(release.data()),
                        strnlen(reinterpret_cast<const char*>(release.data()), 65));
  if (got != info->OsRelease()) {
    return absl::NotFoundError(absl::StrCat("OSRELEASE=", info->OsRelease(),
                                            " but init_uts_ns.name.release holds \"",
                                            absl::CHexEscape(got), "\""));
  }
  k->info = *std::move(info);
  k->phys_base = static_cast<uint64_t>(*phys_base);
  k->kaslr_offset = k->info.KernelOffset().value_or(0);
  k->pgd_paddr = pa(*pgd);
  k->paging_levels = k->info.Number("pgtable_l5_enabled").value_or(0) == 1 ? 5 : 4;
  return absl::OkStatus();
}

// Splits [paddr, paddr + size) mapped at vaddr into pieces inside RAM.
void AddClipped(const GuestLayout& layout, VirtualMapping m, std::vector<VirtualMapping>* out) {
  for (const GuestRange& r : layout.ranges()) {
    const uint64_t lo = std::max(m.paddr, r.guest_physical);
    const uint64_t hi = std::min(m.paddr + m.size, r.end());
    if (lo < hi) out->push_back({m.vaddr + (lo - m.paddr), lo, hi - lo});
  }
}

void FindMappings(const GuestLayout& layout, PhysReader counted, GuestKernel* k) {
  const int levels = k->paging_levels;
  const auto linear = [&](uint64_t v) { return v - kStartKernelMap + k->phys_base; };
  const auto maps_linearly = [&](uint64_t v) {
    const std::optional<uint64_t> p = TranslateVirtual(counted, k->pgd_paddr, levels, v);
    return p.has_value() && *p == linear(v) && InRam(layout, *p, kPage);
  };
  std::vector<std::string> missing;
  // 3. The kernel image.
  uint64_t anchor = k->info.Symbol("_stext").value_or(*k->info.Symbol("init_uts_ns"));
  anchor &= ~(k2MiB - 1);
  if (maps_linearly(anchor)) {
    uint64_t lo = anchor, hi = anchor + k2MiB;
    while (lo - k2MiB >= kStartKernelMap && maps_linearly(lo - k2MiB)) lo -= k2MiB;
    // Up to 1 GiB (KERNEL_IMAGE_SIZE); the last block may be partly mapped.
    while (hi < kStartKernelMap + k1GiB && maps_linearly(hi)) {
      if (!maps_linearly(hi + k2MiB - kPage)) break;
      hi += k2MiB;
    }
    k->kernel_image = VirtualMapping{lo, linear(lo), hi - lo};
    AddClipped(layout, *k->kernel_image, &k->mappings);
  } else {
    missing.push_back(absl::StrFormat("the kernel image (%#x) is not mapped linearly", anchor));
  }
  // 4. The direct map.
  if (levels == 4) {
    const std::vector<GuestRange>& ranges = layout.ranges();
    const auto direct = [&](uint64_t base) {
      for (const GuestRange& r : ranges) {
        // Not the range's last page: firmware reserves the top of low RAM
        // (e820), and Linux does not map it.
        for (uint64_t p : {r.guest_physical == 0 ? uint64_t{0x100000} : r.guest_physical,
                           r.guest_physical + r.size / 2 / kPage * kPage}) {
          const std::optional<uint64_t> got = TranslateVirtual(counted, k->pgd_paddr, 4, base + p);
          if (!got.has_value() || *got != p) return false;
        }
      }
      return true;
    };
    std::vector<uint8_t> pml4(kPage), pdpt(kPage);
    if (counted(k->pgd_paddr, pml4).ok()) {
      for (int i = 256; i < 511 && !k->page_offset_base.has_value(); ++i) {
        const uint64_t e = Load<uint64_t>(pml4.data() + 8 * i);
        if (!(e & kPresent) || !counted(e & kPteAddr, pdpt).ok()) continue;
        for (int j = 0; j < 512; ++j) {
          const uint64_t f = Load<uint64_t>(pdpt.data() + 8 * j);
          if (!(f & kPresent)) continue;
          const uint64_t base = 0xffff000000000000ULL | (uint64_t(i) << 39) | (uint64_t(j) << 30);
          const std::optional<uint64_t> p = TranslateVirtual(counted, k->pgd_paddr, 4, base);
          if (p.has_value() && *p == 0 && direct(base)) {
            k->page_offset_base = base;
            break;
          }
        }
      }
    }
    if (k->page_offset_base.has_value()) {
      for (const GuestRange& r : ranges) {
        k->mappings.push_back({*k->page_offset_base + r.guest_physical, r.guest_physical, r.size});
      }
    } else {
      missing.push_back("no direct map (page_offset_base) found in the page tables");
    }
  } else {
    missing.push_back("5-level paging: the direct map is not searched");
  }
  k->message = absl::StrJoin(missing, "; ");
}

}  // namespace

absl::StatusOr<Vmcoreinfo> Vmcoreinfo::Parse(absl::string_view text) {
  Vmcoreinfo out;
  out.text_ = std::string(text);
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    for (char c : line) {
      if (c < 0x20 || c > 0x7e) return absl::InvalidArgumentError("VMCOREINFO text is not ASCII");
    }
    const size_t eq = line.find('=');
    if (eq == absl::string_view::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat("VMCOREINFO line without '=': ", line));
    }
    out.values_.emplace(std::string(line.substr(0, eq)), std::string(line.substr(eq + 1)));
  }
  if (!absl::StartsWith(text, "OSRELEASE=")) {
    return absl::InvalidArgumentError("VMCOREINFO text does not start with OSRELEASE=");
  }
  return out;
}

std::optional<std::string> Vmcoreinfo::Get(absl::string_view key) const {
  auto it = values_.find(key);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

namespace {
std::optional<uint64_t> Hex(const std::optional<std::string>& s) {
  uint64_t v;
  if (!s.has_value() || !absl::SimpleHexAtoi(*s, &v)) return std::nullopt;
  return v;
}
}  // namespace

std::optional<uint64_t> Vmcoreinfo::Symbol(absl::string_view name) const {
  return Hex(Get(absl::StrCat("SYMBOL(", name, ")")));
}
std::optional<uint64_t> Vmcoreinfo::KernelOffset() const { return Hex(Get("KERNELOFFSET")); }
std::optional<uint64_t> Vmcoreinfo::Offset(absl::string_view name) const {
  uint64_t v;
  std::optional<std::string> s = Get(absl::StrCat("OFFSET(", name, ")"));
  if (!s.has_value() || !absl::SimpleAtoi(*s, &v)) return std::nullopt;
  return v;
}
std::optional<int64_t> Vmcoreinfo::Number(absl::string_view name) const {
  int64_t v;
  std::optional<std::string> s = Get(absl::StrCat("NUMBER(", name, ")"));
  if (!s.has_value() || !absl::SimpleAtoi(*s, &v)) return std::nullopt;
  return v;
}

std::optional<uint64_t> TranslateVirtual(PhysReader read, uint64_t pgd_paddr, int levels,
                                         uint64_t vaddr) {
  uint64_t table = pgd_paddr;
  for (int level = levels; level >= 1; --level) {
    const int shift = 12 + 9 * (level - 1);
    const uint64_t index = (vaddr >> shift) & 511;
    uint8_t raw[8];
    if (!read(table + 8 * index, raw).ok()) return std::nullopt;
    const uint64_t e = Load<uint64_t>(raw);
    if (!(e & kPresent)) return std::nullopt;
    if (level == 1 || ((level == 2 || level == 3) && (e & kHuge))) {
      const uint64_t size = uint64_t{1} << shift;
      return ((e & kPteAddr) & ~(size - 1)) | (vaddr & (size - 1));
    }
    table = e & kPteAddr;
  }
  return std::nullopt;
}

std::string ElfNote(absl::string_view name, uint32_t type, absl::string_view desc) {
  std::string out;
  Elf64_Nhdr h{};
  h.n_namesz = static_cast<Elf64_Word>(name.size() + 1);
  h.n_descsz = static_cast<Elf64_Word>(desc.size());
  h.n_type = type;
  out.append(reinterpret_cast<const char*>(&h), sizeof h);
  out.append(name.data(), name.size());
  out.push_back('\0');
  out.append(-out.size() % 4, '\0');
  out.append(desc.data(), desc.size());
  out.append(-out.size() % 4, '\0');
  return out;
}

absl::StatusOr<GuestKernel> FindGuestKernel(const GuestLayout& layout, PhysReader read,
                                            const KernelSearchOptions& options) {
  const absl::Time start = absl::Now();
  GuestKernel k;
  KernelSearchStats& st = k.stats;
  auto counted_fn = [&](uint64_t paddr, std::span<uint8_t> out) {
    return ReadCounted(read, &st, paddr, out);
  };
  PhysReader counted(counted_fn);

  // A candidate at `paddr` whose header `head` says `descsz`: true if it
  // passed the check (k filled).
  const auto try_at = [&](uint64_t paddr, uint32_t descsz) -> absl::StatusOr<bool> {
    ++st.candidates;
    std::vector<uint8_t> desc(descsz);
    if (!InRam(layout, paddr + kHeaderSize, descsz)) {
      ++st.rejected;
      st.last_rejection = absl::StrFormat("note at %#x runs past RAM", paddr);
      return false;
    }
    if (absl::Status s = counted(paddr + kHeaderSize, desc); !s.ok()) return s;
    absl::string_view text(reinterpret_cast<const char*>(desc.data()), desc.size());
    // The kernel's descsz counts the text without a NUL; tolerate one.
    while (!text.empty() && text.back() == '\0') text.remove_suffix(1);
    absl::Status s = Check(layout, counted, text, &k);
    if (!s.ok()) {
      ++st.rejected;
      st.last_rejection = absl::StrFormat("note at %#x: %s", paddr, s.message());
      return false;
    }
    k.note_paddr = paddr;
    k.method = options.method;
    k.note = ElfNote(kNoteName, 0, std::string(reinterpret_cast<const char*>(desc.data()), descsz));
    return true;
  };

  bool found = false;
  if (options.note_paddr.has_value()) {
    uint8_t head[kHeaderSize];
    const uint64_t at = *options.note_paddr;
    if (!InRam(layout, at, kHeaderSize)) {
      return absl::NotFoundError(absl::StrFormat(
          "the VMCOREINFO note address %#x (%s) is outside the guest's RAM", at, options.method));
    }
    if (absl::Status s = counted(at, head); !s.ok()) return s;
    const uint32_t descsz = NoteHeader(head);
    if (descsz == 0) {
      return absl::NotFoundError(
          absl::StrFormat("no VMCOREINFO note header at %#x (%s names it)", at, options.method));
    }
    absl::StatusOr<bool> ok = try_at(at, descsz);
    if (!ok.ok()) return ok.status();
    if (!*ok) return absl::NotFoundError(absl::StrCat("VMCOREINFO note ", st.last_rejection));
    found = true;
  } else {
    std::vector<uint8_t> buf;
    const uint64_t chunk = std::max<uint64_t>(kPage, options.chunk / kPage * kPage);
    // From the top of RAM down, a page at a time: the note is allocated
    // early at boot, and early page allocations on x86 Linux tend to come
    // from the top of memory (so a lazy source fetches little).
    for (auto r = layout.ranges().rbegin(); r != layout.ranges().rend() && !found; ++r) {
      const uint64_t lo = (r->guest_physical + kPage - 1) / kPage * kPage;
      for (uint64_t end = r->end() / kPage * kPage; end > lo && !found;) {
        const uint64_t n = std::min(chunk, end - lo);
        const uint64_t at = end - n;
        end = at;
        if (options.known_zero) {
          bool all_zero = true;
          for (uint64_t off = 0; off < n && all_zero; off += kPage) {
            all_zero = options.known_zero(at + off);
          }
          if (all_zero) {
            st.pages_examined += n / kPage;
            st.pages_known_zero += n / kPage;
            continue;
          }
        }
        buf.resize(n);
        if (absl::Status s = counted(at, buf); !s.ok()) return s;
        for (uint64_t off = n; off > 0;) {
          off -= kPage;
          ++st.pages_examined;
          const uint32_t descsz = NoteHeader(buf.data() + off);
          if (descsz == 0) continue;
          absl::StatusOr<bool> ok = try_at(at + off, descsz);
          if (!ok.ok()) return ok.status();
          if (*ok) {
            found = true;
            break;
          }
        }
      }
    }
  }
  if (!found) {
    std::string msg = absl::StrFormat(
        "no Linux VMCOREINFO note in guest memory: %d page starts examined (%d MiB read), "
        "%d note header(s) found",
        st.pages_examined, st.bytes_read >> 20, st.candidates);
    if (st.rejected > 0) absl::StrAppend(&msg, ", all rejected (last: ", st.last_rejection, ")");
    return absl::NotFoundError(msg);
  }
  FindMappings(layout, counted, &k);
  st.took = absl::Now() - start;
  return k;
}

}  // namespace lazyram
