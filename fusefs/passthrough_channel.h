// PassthroughChannel: negotiates FUSE passthrough, which libfuse 3.14 does
// not know, by standing between libfuse and /dev/fuse (fuse_custom_io).
//
// Read sees every request libfuse reads: it notes the unique and opcode of
// the request this thread is about to handle and, for INIT, whether the
// kernel offers FUSE_PASSTHROUGH. Writev sees every reply libfuse writes
// and patches two kinds before they reach the kernel:
//   * the INIT reply: FUSE_PASSTHROUGH in flags2, max_stack_depth = 1 (the
//     backing files are memfds, which stack on nothing);
//   * an OPEN or CREATE reply the handler marked with MarkOpenReply:
//     FOPEN_PASSTHROUGH and the backing id in fuse_open_out.
// libfuse reads a request and runs its handler on the same thread, and a
// handler that replies at once writes the reply on that thread too: marks
// are thread-local, so the hot path (READ and WRITE replies, possibly from
// fetch-completion threads) costs one thread-local load and no lock.
//
// Splice must stay off both ways: libfuse splices READ data to the device
// without Writev (harmless: nothing there is patched) and, with
// FUSE_CAP_SPLICE_READ, would read requests without Read (Filesystem's
// init clears it).
//
// Thread-safety: every method may be called from any thread.
#ifndef LAZYRAM_FUSEFS_PASSTHROUGH_CHANNEL_H_
#define LAZYRAM_FUSEFS_PASSTHROUGH_CHANNEL_H_

#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace lazyram::fusefs {

class PassthroughChannel {
 public:
  // `dev_fd`: the session's /dev/fuse descriptor (not owned), for the
  // backing-file ioctls.
  explicit PassthroughChannel(int dev_fd) : dev_fd_(dev_fd) {}
  PassthroughChannel(const PassthroughChannel&) = delete;
  PassthroughChannel& operator=(const PassthroughChannel&) = delete;

  // The fuse_custom_io hooks: read(2) and writev(2) on `fd`, plus the
  // inspection and patching above.
  ssize_t Read(int fd, void* buf, size_t len);
  ssize_t Writev(int fd, struct iovec* iov, int count);

  // Split out of Read and Writev for tests: what Read notes about one
  // request, and the patching Writev does to one reply.
  void InspectRequest(const void* buf, size_t len);
  void PatchReply(struct iovec* iov, int count);

  // True once an INIT reply asked for passthrough (the kernel offered it
  // and nothing excluded it); the kernel may still refuse it, which the
  // first OpenBacking reveals (EPERM).
  bool negotiated() const { return negotiated_.load(std::memory_order_acquire); }
  // Why passthrough was not asked for; empty if it was, or before INIT.
  std::string refusal() const;

  // Called by an OPEN or CREATE handler just before it replies on the same
  // thread: that reply gets FOPEN_PASSTHROUGH with `backing_id`.
  void MarkOpenReply(int32_t backing_id);
  // After that reply: true if it was patched. False means the reply did
  // not have the expected layout and went out as a cached open.
  bool TakeMarkApplied();

  // FUSE_DEV_IOC_BACKING_OPEN: registers `fd` as a backing file; returns
  // its backing id. Needs CAP_SYS_ADMIN and a negotiated connection.
  absl::StatusOr<int32_t> OpenBacking(int fd) const;
  // FUSE_DEV_IOC_BACKING_CLOSE. Files open on it keep it alive.
  absl::Status CloseBacking(int32_t backing_id) const;

 private:
  void PatchInit(struct iovec* iov, int count);
  void SetRefusal(std::string reason);

  const int dev_fd_;
  std::atomic<bool> kernel_offers_{false};
  std::atomic<bool> negotiated_{false};
  mutable absl::Mutex mu_;
  std::string refusal_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lazyram::fusefs

#endif  // LAZYRAM_FUSEFS_PASSTHROUGH_CHANNEL_H_
