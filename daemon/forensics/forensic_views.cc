#include "daemon/forensics/forensic_views.h"

#include <elf.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

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
    cache_.views = {BuildPhysmemRaw(*layout, ram), BuildLime(*layout, ram),
                    BuildElf(*layout, ram, LayoutNote(*layout, *ram))};
  }
  return cache_.views[static_cast<size_t>(kind)];
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

std::shared_ptr<MemoryView> ForensicViews::BuildElf(const GuestLayout& layout, Region* ram,
                                                    const std::string& note) {
  const std::vector<GuestRange>& ranges = layout.ranges();
  const uint64_t phnum = 1 + ranges.size();
  const uint64_t note_offset = sizeof(Elf64_Ehdr) + phnum * sizeof(Elf64_Phdr);
  static constexpr char kOwner[] = "LAZYRAM";  // with its NUL: 8 bytes
  std::string note_bytes;
  Elf64_Nhdr nhdr{};
  nhdr.n_namesz = sizeof kOwner;
  nhdr.n_descsz = static_cast<Elf64_Word>(note.size());
  nhdr.n_type = kNoteType;
  Append(&note_bytes, nhdr);
  note_bytes.append(kOwner, sizeof kOwner);
  note_bytes.append(note);
  note_bytes.append(AlignUp(note_bytes.size(), 4) - note_bytes.size(), '\0');
  const uint64_t data_offset = AlignUp(note_offset + note_bytes.size(), kPage);

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
  std::vector<Segment> data;
  uint64_t offset = data_offset;
  for (const GuestRange& r : ranges) {
    Elf64_Phdr load{};
    load.p_type = PT_LOAD;
    load.p_flags = PF_R | PF_W | PF_X;
    load.p_offset = offset;
    // As QEMU's dump-guest-memory without paging: virtual = physical.
    load.p_vaddr = r.guest_physical;
    load.p_paddr = r.guest_physical;
    load.p_filesz = r.size;
    load.p_memsz = r.size;
    Append(&head, load);
    data.push_back(Ram(ram, r));
    const uint64_t next = AlignUp(offset + r.size, kPage);
    if (next > offset + r.size) data.push_back(Zeros(next - offset - r.size));
    offset = next;
  }
  head += note_bytes;
  head.append(data_offset - head.size(), '\0');
  std::vector<Segment> segments;
  segments.push_back(Bytes(std::move(head)));
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
  // Region names and the QEMU machine name are bytes from a source; the
  // serializer would throw on ones that are not UTF-8.
  return out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace lazyram
