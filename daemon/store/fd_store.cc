#include "daemon/store/fd_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "daemon/base/errno_status.h"

namespace lazyram {

FdStore::FdStore(UniqueFd fd, std::string description, uint64_t size)
    : fd_(std::move(fd)), description_(std::move(description)), size_(size) {}

absl::StatusOr<std::unique_ptr<FdStore>> FdStore::CreateMemory(absl::string_view name,
                                                               uint64_t size) {
  std::string label = absl::StrCat("lazyram:", name);
  // Sealable: FUSE passthrough seals the size of a region from a source
  // (fusefs/passthrough_policy.h).
  UniqueFd fd(memfd_create(label.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return ErrnoStatus(errno, absl::StrCat("memfd_create for region ", name));
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("sizing memory store of ", name));
  }
  return std::unique_ptr<FdStore>(new FdStore(std::move(fd), label, size));
}

absl::StatusOr<std::unique_ptr<FdStore>> FdStore::CreateFile(absl::string_view dir,
                                                             absl::string_view name,
                                                             uint64_t size) {
  std::string path = absl::StrCat(dir, "/", name);
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid()) return ErrnoStatus(errno, absl::StrCat("opening store file ", path));
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("sizing store file ", path));
  }
  return std::unique_ptr<FdStore>(new FdStore(std::move(fd), path, size));
}

absl::Status FdStore::Read(uint64_t offset, std::span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n =
        pread(fd_.get(), out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("reading ", description_));
    }
    if (n == 0) {
      // Past the end of the file: reads as zero, like a hole.
      std::fill(out.begin() + done, out.end(), 0);
      break;
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status FdStore::Write(uint64_t offset, std::span<const uint8_t> data) {
  // A write holds the file's inode lock throughout: a fault's 4 KiB write
  // to the same memfd waits behind at most this much of a pulled run.
  constexpr size_t kMaxWrite = 256 << 10;
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n =
        pwrite(fd_.get(), data.data() + done, std::min<size_t>(data.size() - done, kMaxWrite),
               static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("writing ", description_));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status FdStore::Punch(uint64_t offset, uint64_t length) {
  if (length == 0) return absl::OkStatus();
  if (fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                static_cast<off_t>(length)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("punching a hole in ", description_));
  }
  return absl::OkStatus();
}

absl::Status FdStore::Resize(uint64_t size) {
  // Growing never cuts the file: with FUSE passthrough the kernel writes
  // the memfd directly, and a write past the old end may land between a
  // look at the size and this call. fallocate only ever extends (and
  // allocates just the last page); ftruncate is for shrinking, and for
  // files whose filesystem cannot fallocate.
  if (size > Size()) {
    if (fallocate(fd_.get(), 0, static_cast<off_t>(size - 1), 1) == 0) {
      size_.store(size, std::memory_order_release);
      return absl::OkStatus();
    }
    if (errno != EOPNOTSUPP) return ErrnoStatus(errno, absl::StrCat("growing ", description_));
  }
  if (ftruncate(fd_.get(), static_cast<off_t>(size)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("resizing ", description_));
  }
  size_.store(size, std::memory_order_release);
  return absl::OkStatus();
}

}  // namespace lazyram
