// The one rule for region names. A region name travels in WELCOME, comes
// from the command line (--region ID=FILE), from a file name in a source
// directory or store, and from a create in the mount; everywhere it becomes a
// file name under the mount point, so every path checks it here.
#ifndef LAZYRAM_DAEMON_PROTOCOL_REGION_NAME_H_
#define LAZYRAM_DAEMON_PROTOCOL_REGION_NAME_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace lazyram {

// What is wrong with `name` as a region name ("is empty", "contains '/'",
// ...), or an empty string when it is a good one: non-empty, at most
// protocol::kMaxRegionName bytes, no '/' or NUL, not "." or "..".
absl::string_view RegionNameProblem(absl::string_view name);

// InvalidArgument naming the problem (the name C-escaped), or OK.
absl::Status ValidateRegionName(absl::string_view name);

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_PROTOCOL_REGION_NAME_H_
