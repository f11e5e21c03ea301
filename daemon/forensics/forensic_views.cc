#include "daemon/forensics/forensic_views.h"

#include <elf.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "daemon/base/log.h"

namespace lazyram {
namespace {

using Segment = MemoryView::Segment;
constexpr uint64_t kPage = 4096;

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

Segment Bytes(std::string bytes) {
  Segment s;
  s.kind = Segment::Kind::kBytes;
  s.length = bytes.size();
  s.bytes = std::move(bytes);
  return s;
}

Segment Zeros(uint64_t length) {
  Segment s;
  s.kind = Segment::Kind::kZero;
  s.length = length;
  return s;
}

Segment Ram(Region* ram, const GuestRange& range) {
  Segment s;
  s.kind = Segment::Kind::kRegion;
  s.length = range.size;
  s.region = ram;
  s.region_offset = range.region_offset;
  return s;
}

template <typename T>
void Append(std::string* out, const T& value) {
  out->append(reinterpret_cast<const char*>(&value), sizeof value);
}

nlohmann::json RangesJson(const GuestLayout& layout) {
  nlohmann::json ranges = nlohmann::json::array();
  for (const GuestRange& r : layout.ranges()) {
    ranges.push_back({{"guest_physical", r.guest_physical},
                      {"size", r.size},
                      {"region_offset", r.region_offset}});
  }
  return ranges;
}

std::string Hex(uint64_t v) { return absl::StrFormat("%#x", v); }

nlohmann::json KernelJson(const ForensicViews::KernelSearch& search) {
  nlohmann::json out;
  out["searched"] = true;
  out["search_seconds"] = absl::ToDoubleSeconds(search.took);
  if (!search.kernel.ok()) {
    out["found"] = false;
    out["message"] = std::string(search.kernel.status().message());
    return out;
  }
  const GuestKernel& k = *search.kernel;
  out["found"] = true;
  out["release"] = k.info.OsRelease();
  out["vmcoreinfo"] = {{"guest_physical", k.note_paddr},
                       {"guest_physical_hex", Hex(k.note_paddr)},
                       {"found_by", k.method},
                       {"size", k.info.text().size()},
                       {"pages_examined", k.stats.pages_examined},
                       {"pages_known_zero", k.stats.pages_known_zero},
                       {"bytes_read", k.stats.bytes_read},
                       {"candidates", k.stats.candidates},
                       {"rejected", k.stats.rejected}};
  out["kaslr_offset"] = k.kaslr_offset;
  out["kaslr_offset_hex"] = Hex(k.kaslr_offset);
  out["phys_base_hex"] = Hex(k.phys_base);
  out["page_offset_base_hex"] =
      k.page_offset_base.has_value() ? nlohmann::json(Hex(*k.page_offset_base)) : nullptr;
  nlohmann::json maps = nlohmann::json::array();
  for (const VirtualMapping& m : k.mappings) {
    maps.push_back({{"virtual", Hex(m.vaddr)}, {"guest_physical", Hex(m.paddr)}, {"size", m.size}});
  }
  out["virtual_loads"] = std::move(maps);
  out["message"] = k.message.empty() ? nlohmann::json(nullptr) : nlohmann::json(k.message);
  return out;
}

}  // namespace

ForensicViews::ForensicViews(const RegionSet* regions, RegionHasher* hasher, Options options)
    : regions_(regions), hasher_(hasher), options_(std::move(options)) {}

std::optional<MachineType> ForensicViews::machine() const {
  if (options_.machine.has_value()) return options_.machine;
  if (options_.qemu_machine.empty()) return std::nullopt;
  absl::StatusOr<MachineType> parsed = GuestLayout::ParseMachine(options_.qemu_machine);
  if (!parsed.ok()) return std::nullopt;
  return *parsed;
}

std::optional<GuestLayout> ForensicViews::Layout(Region** main_ram) const {
  const std::optional<MachineType> type = machine();
  if (!type.has_value()) return std::nullopt;
  std::vector<std::string> names;
  std::vector<uint64_t> sizes;
  const size_t count = regions_->region_count();
  for (size_t i = 0; i < count; ++i) {
    Region* r = regions_->region(i);
    names.push_back(r->name());
    sizes.push_back(r->size());
  }
  const std::optional<size_t> main = FindMainRam(names, sizes);
  if (!main.has_value()) return std::nullopt;
  *main_ram = regions_->region(*main);
  return GuestLayout::ForX86(*type, sizes[*main]);
}

std::shared_ptr<const MemoryView> ForensicViews::View(Kind kind) const {
  if (kind == Kind::kManifest) {
    return std::make_shared<MemoryView>(std::vector<Segment>{Bytes(ManifestJson())});
  }
  Region* ram = nullptr;
  const std::optional<GuestLayout> layout = Layout(&ram);
  if (!layout.has_value()) return nullptr;
  absl::MutexLock lock(&mu_);
  if (cache_.ram != ram || cache_.size != layout->ram_size() || cache_.views[0] == nullptr) {
    cache_.ram = ram;
    cache_.size = layout->ram_size();
    std::shared_ptr<const MemoryView> raw = BuildPhysmemRaw(*layout, ram);
    // vmcore.elf's header depends on the guest kernel: it is made, and the
    // kernel searched (once, cached), when the header is first read.
    auto header = [this, layout = *layout, ram, raw]() {
      std::shared_ptr<const KernelSearch> search = SearchKernel(layout, ram, raw);
      return search->kernel.ok() ? &*search->kernel : nullptr;
    };
    cache_.views = {
        raw, BuildLime(*layout, ram),
        BuildElfWith(*layout, ram, LayoutNote(*layout, *ram), options_.cpus, std::move(header))};
  }
  return cache_.views[static_cast<size_t>(kind)];
}

std::shared_ptr<const ForensicViews::KernelSearch> ForensicViews::KernelIfSearched() const {
  absl::MutexLock lock(&done_mu_);
  return searched_;
}

std::shared_ptr<const ForensicViews::KernelSearch> ForensicViews::Kernel() const {
  Region* ram = nullptr;
  const std::optional<GuestLayout> layout = Layout(&ram);
  if (!layout.has_value()) return nullptr;
  std::shared_ptr<const MemoryView> raw = View(Kind::kPhysmemRaw);
  if (raw == nullptr) return nullptr;
  return SearchKernel(*layout, ram, std::move(raw));
}

std::shared_ptr<const ForensicViews::KernelSearch> ForensicViews::SearchKernel(
    const GuestLayout& layout, Region* ram, std::shared_ptr<const MemoryView> raw) const {
  absl::MutexLock lock(&search_mu_);
  if (search_ != nullptr && search_key_.ram == ram && search_key_.size == layout.ram_size()) {
    return search_;
  }
  // physmem.raw's offsets are guest-physical addresses; its reads fetch
  // what a lazy source has not sent yet. This thread waits for them.
  auto read = [&raw](uint64_t paddr, std::span<uint8_t> out) -> absl::Status {
    absl::Notification done;
    absl::StatusOr<std::vector<uint8_t>> got;
    raw->Read(paddr, out.size(), [&](absl::StatusOr<std::vector<uint8_t>> r) {
      got = std::move(r);
      done.Notify();
    });
    done.WaitForNotification();
    if (!got.ok()) return got.status();
    std::fill(out.begin(), out.end(), 0);
    std::memcpy(out.data(), got->data(), std::min(out.size(), got->size()));
    return absl::OkStatus();
  };
  auto result = std::make_shared<KernelSearch>();
  const absl::Time start = absl::Now();
  KernelSearchOptions opts;
  opts.known_zero = [&layout, ram](uint64_t paddr) {
    for (const GuestRange& r : layout.ranges()) {
      if (paddr >= r.guest_physical && paddr < r.end()) {
        return ram->page_state((paddr - r.guest_physical + r.region_offset) / kPage) ==
               PageState::kZero;
      }
    }
    return false;
  };
  if (options_.vmcoreinfo_paddr.has_value()) {
    opts.note_paddr = options_.vmcoreinfo_paddr;
    opts.method = "vmcoreinfo-device";
  }
  result->kernel = FindGuestKernel(layout, read, opts);
  if (!result->kernel.ok() && opts.note_paddr.has_value()) {
    LogWarning("guest kernel: %s; scanning memory instead", result->kernel.status().message());
    opts.note_paddr.reset();
    opts.method = "memory-scan";
    result->kernel = FindGuestKernel(layout, read, opts);
  }
  result->took = absl::Now() - start;
  if (result->kernel.ok()) {
    const GuestKernel& k = *result->kernel;
    LogInfo(
        "guest kernel %s: VMCOREINFO at guest-physical %#x (%s, %.3f s, %d MiB read); "
        "KASLR offset %#x, phys_base %#x%s%s",
        k.info.OsRelease(), k.note_paddr, k.method, absl::ToDoubleSeconds(result->took),
        k.stats.bytes_read >> 20, k.kaslr_offset, k.phys_base, k.message.empty() ? "" : "; ",
        k.message);
  } else {
    LogInfo("guest kernel: %s (%.3f s)", result->kernel.status().message(),
            absl::ToDoubleSeconds(result->took));
  }
  search_key_ = {ram, layout.ram_size()};
  search_ = result;
  absl::MutexLock done(&done_mu_);
  searched_ = result;
  return result;
}

std::shared_ptr<MemoryView> ForensicViews::BuildPhysmemRaw(const GuestLayout& layout, Region* ram) {
  std::vector<Segment> segments;
  uint64_t at = 0;
  for (const GuestRange& r : layout.ranges()) {
    if (r.guest_physical > at) segments.push_back(Zeros(r.guest_physical - at));
    segments.push_back(Ram(ram, r));
    at = r.end();
  }
  return std::make_shared<MemoryView>(std::move(segments));
}

std::shared_ptr<MemoryView> ForensicViews::BuildLime(const GuestLayout& layout, Region* ram) {
  std::vector<Segment> segments;
  for (const GuestRange& r : layout.ranges()) {
    std::string header;
    Append(&header, kLimeMagic);
    Append(&header, kLimeVersion);
    Append(&header, r.guest_physical);
    Append(&header, r.end() - 1);  // inclusive
    header.append(8, '\0');
    segments.push_back(Bytes(std::move(header)));
    segments.push_back(Ram(ram, r));
  }
  return std::make_shared<MemoryView>(std::move(segments));
}

std::string ForensicViews::PrstatusNote(const X86CpuState& c) {
  // QEMU's x86_64_elf_prstatus: pad to pr_pid (32), pid, pad to pr_reg
  // (76), user_regs_struct, pad (8): 336 bytes.
  std::string d(32, '\0');
  Append(&d, static_cast<uint32_t>(c.index + 1));
  d.append(76, '\0');
  enum { kAx, kCx, kDx, kBx, kSp, kBp, kSi, kDi };
  enum { kEs, kCs, kSs, kDs, kFs, kGs };
  const uint64_t regs[27] = {c.regs[15],
                             c.regs[14],
                             c.regs[13],
                             c.regs[12],
                             c.regs[kBp],
                             c.regs[kBx],
                             c.regs[11],
                             c.regs[10],
                             c.regs[9],
                             c.regs[8],
                             c.regs[kAx],
                             c.regs[kCx],
                             c.regs[kDx],
                             c.regs[kSi],
                             c.regs[kDi],
                             0 /* orig_rax */,
                             c.rip,
                             c.segs[kCs].selector,
                             c.rflags,
                             c.regs[kSp],
                             c.segs[kSs].selector,
                             c.segs[kFs].base,
                             c.segs[kGs].base,
                             c.segs[kDs].selector,
                             c.segs[kEs].selector,
                             c.segs[kFs].selector,
                             c.segs[kGs].selector};
  for (uint64_t r : regs) Append(&d, r);
  d.append(8, '\0');
  return ElfNote("CORE", NT_PRSTATUS, d);
}

std::string ForensicViews::QemuCpuNote(const X86CpuState& c) {
  auto seg = [](std::string* d, const X86Segment& s) {
    Append(d, s.selector);
    Append(d, s.limit);
    Append(d, s.flags);
    Append(d, uint32_t{0});
    Append(d, s.base);
  };
  std::string d;
  Append(&d, uint32_t{1});                                       // QEMUCPUSTATE_VERSION
  Append(&d, uint32_t{0});                                       // sizeof(QEMUCPUState): set below
  for (int i : {0, 3, 1, 2, 6, 7, 4, 5}) Append(&d, c.regs[i]);  // rax rbx rcx rdx rsi rdi rsp rbp
  for (int i = 8; i < 16; ++i) Append(&d, c.regs[i]);
  Append(&d, c.rip);
  Append(&d, c.rflags);
  for (int i : {1, 3, 0, 4, 5, 2}) seg(&d, c.segs[i]);  // cs ds es fs gs ss
  seg(&d, c.ldt);
  seg(&d, c.tr);
  seg(&d, c.gdt);
  seg(&d, c.idt);
  for (uint64_t cr : c.cr) Append(&d, cr);
  Append(&d, c.kernel_gs_base);
  const uint32_t size = static_cast<uint32_t>(d.size());  // 0x1b8
  std::memcpy(d.data() + 4, &size, 4);
  return ElfNote("QEMU", 0, d);
}

std::shared_ptr<MemoryView> ForensicViews::BuildElf(const GuestLayout& layout, Region* ram,
                                                    const std::string& note,
                                                    const GuestKernel* kernel,
                                                    const std::vector<X86CpuState>& cpus) {
  return BuildElfWith(layout, ram, note, cpus, [kernel] { return kernel; });
}

std::shared_ptr<MemoryView> ForensicViews::BuildElfWith(
    const GuestLayout& layout, Region* ram, const std::string& note,
    const std::vector<X86CpuState>& cpus, absl::AnyInvocable<const GuestKernel*()> kernel) {
  const std::vector<GuestRange>& ranges = layout.ranges();
  // Room for the most the kernel can add, so that the file's size and its
  // data offsets do not depend on the search: per RAM range a piece of the
  // kernel image and a direct-map piece; a VMCOREINFO note of at most
  // 4096 bytes of text.
  std::string fixed_notes = ElfNote("LAZYRAM", kNoteType, note);
  for (const X86CpuState& cpu : cpus) fixed_notes += PrstatusNote(cpu);
  for (const X86CpuState& cpu : cpus) fixed_notes += QemuCpuNote(cpu);
  const uint64_t max_phnum = 1 + 3 * ranges.size();
  const uint64_t max_notes = fixed_notes.size() + 12 + 12 + 4096;
  const uint64_t data_offset =
      AlignUp(sizeof(Elf64_Ehdr) + max_phnum * sizeof(Elf64_Phdr) + max_notes, kPage);

  std::vector<Segment> data;
  std::vector<uint64_t> range_offsets;
  uint64_t offset = data_offset;
  for (const GuestRange& r : ranges) {
    range_offsets.push_back(offset);
    data.push_back(Ram(ram, r));
    const uint64_t next = AlignUp(offset + r.size, kPage);
    if (next > offset + r.size) data.push_back(Zeros(next - offset - r.size));
    offset = next;
  }

  auto make_header = [layout, fixed_notes = std::move(fixed_notes), data_offset, range_offsets,
                      kernel = std::move(kernel)]() mutable {
    const GuestKernel* k = kernel();
    const std::vector<GuestRange>& ranges = layout.ranges();
    std::vector<VirtualMapping> mappings;
    std::string note_bytes = fixed_notes;
    if (k != nullptr && k->note.size() <= 12 + 12 + 4096) {
      note_bytes += k->note;
      mappings = k->mappings;
    }
    if (mappings.size() > 2 * ranges.size()) mappings.resize(2 * ranges.size());
    const uint64_t phnum = 1 + ranges.size() + mappings.size();
    const uint64_t note_offset = sizeof(Elf64_Ehdr) + phnum * sizeof(Elf64_Phdr);

    Elf64_Ehdr ehdr{};
    std::memcpy(ehdr.e_ident, ELFMAG, SELFMAG);
    ehdr.e_ident[EI_CLASS] = ELFCLASS64;
    ehdr.e_ident[EI_DATA] = ELFDATA2LSB;
    ehdr.e_ident[EI_VERSION] = EV_CURRENT;
    ehdr.e_ident[EI_OSABI] = ELFOSABI_SYSV;
    ehdr.e_type = ET_CORE;
    ehdr.e_machine = EM_X86_64;
    ehdr.e_version = EV_CURRENT;
    ehdr.e_phoff = sizeof(Elf64_Ehdr);
    ehdr.e_ehsize = sizeof(Elf64_Ehdr);
    ehdr.e_phentsize = sizeof(Elf64_Phdr);
    ehdr.e_phnum = static_cast<Elf64_Half>(phnum);
    std::string head;
    Append(&head, ehdr);
    Elf64_Phdr pnote{};
    pnote.p_type = PT_NOTE;
    pnote.p_offset = note_offset;
    pnote.p_filesz = note_bytes.size();
    pnote.p_memsz = note_bytes.size();  // as QEMU writes it
    Append(&head, pnote);
    for (size_t i = 0; i < ranges.size(); ++i) {
      Elf64_Phdr load{};
      load.p_type = PT_LOAD;
      load.p_flags = PF_R | PF_W | PF_X;
      load.p_offset = range_offsets[i];
      // As QEMU's dump-guest-memory without paging: virtual = physical.
      load.p_vaddr = ranges[i].guest_physical;
      load.p_paddr = ranges[i].guest_physical;
      load.p_filesz = ranges[i].size;
      load.p_memsz = ranges[i].size;
      Append(&head, load);
    }
    // The kernel's virtual mappings: more PT_LOADs over the same bytes.
    for (const VirtualMapping& m : mappings) {
      Elf64_Phdr load{};
      load.p_type = PT_LOAD;
      load.p_flags = PF_R | PF_W | PF_X;
      for (size_t i = 0; i < ranges.size(); ++i) {
        if (m.paddr >= ranges[i].guest_physical && m.paddr + m.size <= ranges[i].end()) {
          load.p_offset = range_offsets[i] + (m.paddr - ranges[i].guest_physical);
        }
      }
      load.p_vaddr = m.vaddr;
      load.p_paddr = m.paddr;
      load.p_filesz = m.size;
      load.p_memsz = m.size;
      Append(&head, load);
    }
    head += note_bytes;
    return head;  // LazyBytes pads it with zeros to data_offset
  };
  std::vector<Segment> segments;
  Segment header;
  header.kind = Segment::Kind::kLazyBytes;
  header.length = data_offset;
  header.lazy = std::make_shared<LazyBytes>(data_offset, std::move(make_header));
  segments.push_back(std::move(header));
  for (Segment& s : data) segments.push_back(std::move(s));
  return std::make_shared<MemoryView>(std::move(segments));
}

std::string ForensicViews::LayoutNote(const GuestLayout& layout, const Region& ram) const {
  nlohmann::json note = {{"machine", GuestLayout::MachineName(layout.machine())},
                         {"ram_region", ram.name()},
                         {"ram_size", layout.ram_size()},
                         {"ranges", RangesJson(layout)}};
  if (!options_.qemu_machine.empty()) note["qemu_machine"] = options_.qemu_machine;
  if (!options_.source.empty()) note["source"] = options_.source;
  return note.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string ForensicViews::ManifestJson() const {
  nlohmann::json out;
  out["format"] = "lazyram-manifest";
  out["version"] = 1;
  out["source"] =
      options_.source.empty() ? nlohmann::json(nullptr) : nlohmann::json(options_.source);
  out["read_only"] = options_.read_only;
  const std::optional<MachineType> type = machine();
  out["machine"] = type.has_value() ? nlohmann::json(std::string(GuestLayout::MachineName(*type)))
                                    : nlohmann::json(nullptr);
  out["qemu_machine"] = options_.qemu_machine.empty() ? nlohmann::json(nullptr)
                                                      : nlohmann::json(options_.qemu_machine);
  Region* ram = nullptr;
  const std::optional<GuestLayout> layout = Layout(&ram);
  if (layout.has_value()) {
    out["layout"] = {{"ram_region", ram->name()},
                     {"ram_size", layout->ram_size()},
                     {"physical_end", layout->physical_end()},
                     {"ranges", RangesJson(*layout)}};
  } else {
    out["layout"] = nullptr;
  }
  nlohmann::json regions = nlohmann::json::array();
  const size_t count = regions_->region_count();
  for (size_t i = 0; i < count; ++i) {
    Region* r = regions_->region(i);
    nlohmann::json entry = {{"name", r->name()}, {"size", r->size()}, {"sha256", nullptr}};
    std::optional<RegionHasher::Progress> hash = hasher_->Get(r->name());
    if (hash.has_value() && !hash->running && hash->status.ok()) entry["sha256"] = hash->sha256;
    regions.push_back(std::move(entry));
  }
  out["regions"] = std::move(regions);
  nlohmann::json views = nlohmann::json::array();
  if (layout.has_value()) {
    for (int k = 0; k < 3; ++k) {
      std::shared_ptr<const MemoryView> v = View(static_cast<Kind>(k));
      if (v != nullptr) views.push_back({{"name", kNames[k]}, {"size", v->size()}});
    }
  }
  out["views"] = std::move(views);
  out["vcpus"] =
      options_.cpus.empty() ? nlohmann::json(nullptr) : nlohmann::json(options_.cpus.size());
  out["kernel"] = nullptr;
  if (layout.has_value()) {
    std::shared_ptr<const KernelSearch> search = KernelIfSearched();
    if (search != nullptr) {
      out["kernel"] = KernelJson(*search);
    } else {
      out["kernel"] = {{"searched", false},
                       {"message", "searched when views/vmcore.elf is first read"}};
    }
  }
  // Region names and the QEMU machine name are bytes from a source; the
  // serializer would throw on ones that are not UTF-8.
  return out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace lazyram
