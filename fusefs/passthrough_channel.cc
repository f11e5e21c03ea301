#include "fusefs/passthrough_channel.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <utility>

#include "daemon/base/errno_status.h"
#include "fusefs/fuse_passthrough_abi.h"

namespace lazyram::fusefs {
namespace {

enum class Patch : uint8_t { kNone, kInit, kOpen };

// What this thread read last and what it must patch in its next reply.
// libfuse runs a request's handler on the thread that read it.
struct ThreadState {
  uint64_t request_unique = 0;
  uint32_t request_opcode = 0;
  uint64_t patch_unique = 0;  // 0: nothing to patch (the hot path)
  Patch patch = Patch::kNone;
  int32_t backing_id = 0;
  bool applied = false;  // the last OPEN/CREATE mark was patched in
};
thread_local ThreadState tls;

}  // namespace

ssize_t PassthroughChannel::Read(int fd, void* buf, size_t len) {
  const ssize_t n = read(fd, buf, len);
  // libfuse reads errno after a failure: only a success is inspected.
  if (n > 0) InspectRequest(buf, static_cast<size_t>(n));
  return n;
}

ssize_t PassthroughChannel::Writev(int fd, struct iovec* iov, int count) {
  if (tls.patch_unique != 0) PatchReply(iov, count);
  return writev(fd, iov, count);
}

void PassthroughChannel::InspectRequest(const void* buf, size_t len) {
  if (len < sizeof(fuse_in_header)) return;
  fuse_in_header header;
  std::memcpy(&header, buf, sizeof header);
  tls.request_unique = header.unique;
  tls.request_opcode = header.opcode;
  if (header.opcode != abi::kOpInit) return;
  // An older kernel sends a shorter fuse_init_in: what is missing is zero.
  abi::InitIn in{};
  std::memcpy(&in, static_cast<const char*>(buf) + sizeof header,
              std::min(len - sizeof header, sizeof in));
  uint64_t flags = in.flags;
  if (flags & abi::kInitExt) flags |= static_cast<uint64_t>(in.flags2) << 32;
  kernel_offers_.store((flags & abi::kPassthrough) != 0, std::memory_order_release);
  tls.patch_unique = header.unique;
  tls.patch = Patch::kInit;
}

void PassthroughChannel::PatchReply(struct iovec* iov, int count) {
  if (count < 1 || iov[0].iov_len < sizeof(fuse_out_header)) return;
  fuse_out_header out;
  std::memcpy(&out, iov[0].iov_base, sizeof out);
  if (out.unique != tls.patch_unique) return;  // a reply to another request
  const Patch patch = tls.patch;
  tls.patch_unique = 0;
  tls.patch = Patch::kNone;
  if (out.error != 0) return;
  if (patch == Patch::kInit) return PatchInit(iov, count);
  // fuse_reply_open sends fuse_open_out alone, fuse_reply_create after a
  // fuse_entry_out, each as one iovec after the header: the open_out is the
  // last 16 bytes.
  if (count != 2 ||
      (iov[1].iov_len != sizeof(abi::OpenOut) && iov[1].iov_len != abi::kCreateReplySize)) {
    return;
  }
  char* at = static_cast<char*>(iov[1].iov_base) + iov[1].iov_len - sizeof(abi::OpenOut);
  abi::OpenOut open;
  std::memcpy(&open, at, sizeof open);
  // The kernel refuses passthrough together with page-cache flags.
  open.open_flags &= ~(abi::kOpenKeepCache | abi::kOpenDirectIo);
  open.open_flags |= abi::kOpenPassthrough;
  open.backing_id = tls.backing_id;
  std::memcpy(at, &open, sizeof open);
  tls.applied = true;
}

void PassthroughChannel::PatchInit(struct iovec* iov, int count) {
  if (!kernel_offers_.load(std::memory_order_acquire)) {
    return SetRefusal("the kernel does not offer FUSE passthrough (CONFIG_FUSE_PASSTHROUGH)");
  }
  constexpr size_t kNeeded = offsetof(abi::InitOut, max_stack_depth) + sizeof(uint32_t);
  if (count != 2 || iov[1].iov_len < kNeeded) {
    return SetRefusal("libfuse sent an INIT reply of an unexpected layout");
  }
  abi::InitOut init{};
  const size_t len = std::min(iov[1].iov_len, sizeof init);
  std::memcpy(&init, iov[1].iov_base, len);
  // process_init_reply ignores FUSE_PASSTHROUGH next to a writeback cache.
  if (init.flags & abi::kWritebackCache) {
    return SetRefusal("the writeback cache is on, and the kernel allows no passthrough with it");
  }
  init.flags |= static_cast<uint32_t>(abi::kInitExt);
  init.flags2 |= abi::kPassthroughFlags2;
  // Backing files (memfds) stack on nothing; depth 1 also keeps the mount
  // usable as an overlayfs layer.
  init.max_stack_depth = 1;
  std::memcpy(iov[1].iov_base, &init, len);
  negotiated_.store(true, std::memory_order_release);
}

void PassthroughChannel::SetRefusal(std::string reason) {
  absl::MutexLock lock(&mu_);
  refusal_ = std::move(reason);
}

std::string PassthroughChannel::refusal() const {
  absl::MutexLock lock(&mu_);
  return refusal_;
}

void PassthroughChannel::MarkOpenReply(int32_t backing_id) {
  tls.applied = false;
  if (tls.request_opcode != abi::kOpOpen && tls.request_opcode != abi::kOpCreate) return;
  tls.patch_unique = tls.request_unique;
  tls.patch = Patch::kOpen;
  tls.backing_id = backing_id;
}

bool PassthroughChannel::TakeMarkApplied() { return std::exchange(tls.applied, false); }

absl::StatusOr<int32_t> PassthroughChannel::OpenBacking(int fd) const {
  abi::BackingMap map{};
  map.fd = fd;
  const int id = ioctl(dev_fd_, abi::kDevIocBackingOpen, &map);
  if (id < 0) return ErrnoStatus(errno, "FUSE_DEV_IOC_BACKING_OPEN");
  return id;
}

absl::Status PassthroughChannel::CloseBacking(int32_t backing_id) const {
  uint32_t id = static_cast<uint32_t>(backing_id);
  if (ioctl(dev_fd_, abi::kDevIocBackingClose, &id) != 0) {
    return ErrnoStatus(errno, "FUSE_DEV_IOC_BACKING_CLOSE");
  }
  return absl::OkStatus();
}

}  // namespace lazyram::fusefs
