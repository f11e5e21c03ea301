#include "daemon/forensics/guest_layout.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace lazyram {
namespace {

// Where QEMU 7.2 starts splitting RAM around the PCI hole, and how much it
// keeps below 4 GiB when it does (hw/i386/pc_piix.c, pc_q35.c).
constexpr uint64_t kPcSplitAt = 0xE0000000;
constexpr uint64_t kPcBelow = 0xC0000000;
constexpr uint64_t kQ35SplitAt = 0xB0000000;
constexpr uint64_t kQ35Below = 0x80000000;

}  // namespace

GuestLayout GuestLayout::ForX86(MachineType machine, uint64_t ram_size) {
  GuestLayout layout(machine, ram_size);
  const bool pc = machine == MachineType::kPc;
  const uint64_t split_at = pc ? kPcSplitAt : kQ35SplitAt;
  const uint64_t below = ram_size >= split_at ? (pc ? kPcBelow : kQ35Below) : ram_size;
  if (below > 0) layout.ranges_.push_back({0, 0, below});
  if (ram_size > below) layout.ranges_.push_back({k4GiB, below, ram_size - below});
  return layout;
}

absl::StatusOr<MachineType> GuestLayout::ParseMachine(absl::string_view name) {
  if (name == "pc" || absl::StartsWith(name, "pc-i440fx")) return MachineType::kPc;
  if (name == "q35" || absl::StartsWith(name, "pc-q35")) return MachineType::kQ35;
  // Old i440fx types were called pc-0.14, pc-1.0, ...
  if (name.size() > 3 && absl::StartsWith(name, "pc-") && absl::ascii_isdigit(name[3])) {
    return MachineType::kPc;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("machine '", name, "' has no known memory layout (lazyram knows pc and q35)"));
}

absl::string_view GuestLayout::MachineName(MachineType machine) {
  return machine == MachineType::kPc ? "pc" : "q35";
}

uint64_t GuestLayout::physical_end() const { return ranges_.empty() ? 0 : ranges_.back().end(); }

std::optional<size_t> FindMainRam(const std::vector<std::string>& names,
                                  const std::vector<uint64_t>& sizes) {
  std::optional<size_t> best;
  for (size_t i = 0; i < names.size() && i < sizes.size(); ++i) {
    if (sizes[i] == 0) continue;
    if (names[i] == "pc.ram") return i;
    if (!best.has_value() || sizes[i] > sizes[*best]) best = i;
  }
  return best;
}

}  // namespace lazyram
