// Raises the writeback limits the kernel puts on a FUSE mount
// (docs/kernel-facts.md#fuse: FUSE limits its dirty memory to 1% with a
// strict limit, and guest writes crawl). Finds the mount's backing device
// in /proc/self/mountinfo, so it never touches the mount itself.
#ifndef LAZYRAM_FUSEFS_BDI_TUNING_H_
#define LAZYRAM_FUSEFS_BDI_TUNING_H_

#include <string>

#include "absl/status/status.h"

namespace lazyram::fusefs {

// Sets /sys/class/bdi/<dev>/max_ratio to 100 and strict_limit to 0 for the
// mount at `mountpoint` (an absolute, canonical path).
absl::Status RaiseWritebackLimits(const std::string& mountpoint);

// The "major:minor" device of the mount at `mountpoint` according to
// /proc/self/mountinfo (the last one, if stacked), or "" if none. Reads no
// byte of the mount itself, so it is safe on a hung FUSE mount.
std::string MountDevice(const std::string& mountpoint);

}  // namespace lazyram::fusefs

#endif  // LAZYRAM_FUSEFS_BDI_TUNING_H_
