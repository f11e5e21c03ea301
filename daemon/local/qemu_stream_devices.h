// The device state at the end of a QEMU 7.2 migration stream, read with
// the help of the stream's own JSON device description ("vmdesc", written
// after the end marker): it lists every device section in stream order
// with each field's size (per element, and "array_len" elements), struct
// fields, and the subsections that were sent. That makes the sections,
// which carry no length, walkable. lazyram reads two devices from it:
//   cpu (one per vCPU, instance id = CPU index): x86_64 registers
//   vmcoreinfo (-device vmcoreinfo): where the guest's VMCOREINFO note is
// A section the description does not match (name, instance, subsection
// names, the footer) stops the walk with an error naming it; the stream is
// still mountable without the CPU notes.
#ifndef LAZYRAM_DAEMON_LOCAL_QEMU_STREAM_DEVICES_H_
#define LAZYRAM_DAEMON_LOCAL_QEMU_STREAM_DEVICES_H_

#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "daemon/core/cpu_state.h"

namespace lazyram {

struct StreamDevices {
  std::vector<X86CpuState> cpus;
  // -device vmcoreinfo, once the guest told it (has_vmcoreinfo, ELF format).
  std::optional<uint64_t> vmcoreinfo_paddr;
  int sections = 0;
};

// `sections`: the stream's bytes from the first device section up to (not
// including) the kEof marker; `vmdesc`: the JSON description.
absl::StatusOr<StreamDevices> ParseStreamDevices(absl::string_view sections,
                                                 absl::string_view vmdesc);

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_LOCAL_QEMU_STREAM_DEVICES_H_
