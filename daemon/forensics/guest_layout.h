// GuestLayout: where the main RAM file of an x86 QEMU guest sits in the
// guest-physical address space (docs/kernel-facts.md#qemu). QEMU splits RAM
// around the PCI hole below 4 GiB:
//   pc  (i440fx): RAM >= 0xE0000000 -> [0, 3 GiB) and [4 GiB, ...);
//   q35:          RAM >= 0xB0000000 -> [0, 2 GiB) and [4 GiB, ...);
//   otherwise all RAM lies below 4 GiB.
// The first `below` bytes of the file map to [0, below), the rest to
// [4 GiB, 4 GiB + size - below). Not modelled: -machine max-ram-below-4g,
// pc-dimm / NUMA memory, and the ROM and VGA windows under 1 MiB (which read
// the RAM beneath them here).
//
// A value type; thread-compatible.
#ifndef LAZYRAM_DAEMON_FORENSICS_GUEST_LAYOUT_H_
#define LAZYRAM_DAEMON_FORENSICS_GUEST_LAYOUT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lazyram {

enum class MachineType { kPc, kQ35 };

// One guest-physical RAM range backed by the main RAM region.
struct GuestRange {
  uint64_t guest_physical = 0;
  uint64_t region_offset = 0;
  uint64_t size = 0;
  uint64_t end() const { return guest_physical + size; }
  friend bool operator==(const GuestRange&, const GuestRange&) = default;
};

class GuestLayout {
 public:
  static constexpr uint64_t k4GiB = uint64_t{1} << 32;

  // The layout QEMU 7.2 uses for `machine` with `ram_size` bytes of RAM.
  static GuestLayout ForX86(MachineType machine, uint64_t ram_size);

  // "pc" or "q35" (the --machine flag), or a QEMU machine type name as a
  // migration stream records it ("pc-i440fx-7.2", "pc-q35-7.2", "pc-1.1").
  // kInvalidArgument for anything else (microvm, isapc, ...).
  static absl::StatusOr<MachineType> ParseMachine(absl::string_view name);
  static absl::string_view MachineName(MachineType machine);  // "pc" / "q35"

  MachineType machine() const { return machine_; }
  uint64_t ram_size() const { return ram_size_; }
  // Ascending, non-overlapping, non-empty.
  const std::vector<GuestRange>& ranges() const { return ranges_; }
  // One past the highest guest-physical RAM address.
  uint64_t physical_end() const;

 private:
  GuestLayout(MachineType machine, uint64_t ram_size) : machine_(machine), ram_size_(ram_size) {}
  MachineType machine_;
  uint64_t ram_size_;
  std::vector<GuestRange> ranges_;
};

// The main RAM region among `names` (with their `sizes`): the one named
// "pc.ram" (legacy -m) if present, else the largest (a memory backend such
// as mem0 dwarfs the firmware and video blocks); the first on a tie.
// nullopt when there is no non-empty region.
std::optional<size_t> FindMainRam(const std::vector<std::string>& names,
                                  const std::vector<uint64_t>& sizes);

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_FORENSICS_GUEST_LAYOUT_H_
