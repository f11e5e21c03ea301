// The slice of the kernel's FUSE ABI that FUSE passthrough needs and that
// neither libfuse 3.14 nor Debian's <linux/fuse.h> (protocol 7.38) knows:
// protocol 7.40 added FUSE_PASSTHROUGH, max_stack_depth, backing_id,
// FOPEN_PASSTHROUGH and the backing-file ioctls. Values and layouts are
// those of include/uapi/linux/fuse.h in Linux 6.18 (protocol 7.42); the
// static_asserts tie the fields both versions share to <linux/fuse.h>.
// docs/performance.md ("FUSE passthrough") says how lazyram uses them.
#ifndef LAZYRAM_FUSEFS_FUSE_PASSTHROUGH_ABI_H_
#define LAZYRAM_FUSEFS_FUSE_PASSTHROUGH_ABI_H_

#include <linux/fuse.h>
#include <sys/ioctl.h>

#include <cstddef>
#include <cstdint>

namespace lazyram::fusefs::abi {

// Opcodes whose replies are patched (enum fuse_opcode).
inline constexpr uint32_t kOpOpen = 14;
inline constexpr uint32_t kOpInit = 26;
inline constexpr uint32_t kOpCreate = 35;

// INIT flags (fuse_init_in/out.flags; bits 32.. live in flags2).
inline constexpr uint64_t kInitExt = 1ull << 30;         // FUSE_INIT_EXT: flags2 is valid
inline constexpr uint64_t kWritebackCache = 1ull << 16;  // FUSE_WRITEBACK_CACHE
inline constexpr uint64_t kPassthrough = 1ull << 37;     // FUSE_PASSTHROUGH
inline constexpr uint32_t kPassthroughFlags2 = 1u << (37 - 32);

// fuse_open_out.open_flags.
inline constexpr uint32_t kOpenDirectIo = 1u << 0;     // FOPEN_DIRECT_IO
inline constexpr uint32_t kOpenKeepCache = 1u << 1;    // FOPEN_KEEP_CACHE
inline constexpr uint32_t kOpenPassthrough = 1u << 7;  // FOPEN_PASSTHROUGH

// struct fuse_init_in, 7.36+: flags2 follows flags.
struct InitIn {
  uint32_t major;
  uint32_t minor;
  uint32_t max_readahead;
  uint32_t flags;
  uint32_t flags2;
  uint32_t unused[11];
};

// struct fuse_init_out, 7.40+: max_stack_depth is the first of what 7.38
// (and libfuse 3.14, which zeroes it) calls unused.
struct InitOut {
  uint32_t major;
  uint32_t minor;
  uint32_t max_readahead;
  uint32_t flags;
  uint16_t max_background;
  uint16_t congestion_threshold;
  uint32_t max_write;
  uint32_t time_gran;
  uint16_t max_pages;
  uint16_t map_alignment;
  uint32_t flags2;
  uint32_t max_stack_depth;
  uint32_t unused[6];
};

// struct fuse_open_out, 7.40+: backing_id is 7.38's padding.
struct OpenOut {
  uint64_t fh;
  uint32_t open_flags;
  int32_t backing_id;
};

// struct fuse_backing_map: the argument of FUSE_DEV_IOC_BACKING_OPEN.
struct BackingMap {
  int32_t fd;
  uint32_t flags;  // must be 0
  uint64_t padding;
};

inline constexpr unsigned long kDevIocBackingOpen = _IOW(229, 1, BackingMap);
inline constexpr unsigned long kDevIocBackingClose = _IOW(229, 2, uint32_t);

static_assert(sizeof(InitIn) == 64 && offsetof(InitIn, flags2) == 16);
static_assert(sizeof(InitOut) == sizeof(fuse_init_out));
static_assert(offsetof(InitOut, flags) == offsetof(fuse_init_out, flags));
static_assert(offsetof(InitOut, flags2) == offsetof(fuse_init_out, flags2));
static_assert(offsetof(InitOut, max_stack_depth) == offsetof(fuse_init_out, unused));
static_assert(sizeof(OpenOut) == sizeof(fuse_open_out));
static_assert(offsetof(OpenOut, open_flags) == offsetof(fuse_open_out, open_flags));
static_assert(offsetof(OpenOut, backing_id) == offsetof(fuse_open_out, padding));
static_assert(sizeof(BackingMap) == 16);
static_assert(sizeof(fuse_in_header) == 40 && sizeof(fuse_out_header) == 16);
// fuse_reply_create sends fuse_entry_out then fuse_open_out in one buffer.
inline constexpr size_t kCreateReplySize = sizeof(fuse_entry_out) + sizeof(OpenOut);

}  // namespace lazyram::fusefs::abi

#endif  // LAZYRAM_FUSEFS_FUSE_PASSTHROUGH_ABI_H_
