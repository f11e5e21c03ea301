// The libfuse low-level operation table, wired in one place. Every request
// is answered exactly once on every path (style.md, habit 4).
#ifndef LAZYRAM_FUSEFS_FILESYSTEM_OPS_H_
#define LAZYRAM_FUSEFS_FILESYSTEM_OPS_H_

#include <fuse_lowlevel.h>

namespace lazyram::fusefs {

// The table; its userdata must be the Filesystem.
const fuse_lowlevel_ops& FilesystemOps();

}  // namespace lazyram::fusefs

#endif  // LAZYRAM_FUSEFS_FILESYSTEM_OPS_H_
