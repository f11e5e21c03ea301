#include "daemon/store/direct_file_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "daemon/base/errno_status.h"
#include "daemon/base/log.h"

namespace lazyram {
namespace {

constexpr uint64_t kAlign = 4096;
constexpr size_t kBounce = 1 << 20;

bool Aligned(uint64_t v) { return v % kAlign == 0; }
bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kAlign == 0; }

// The calling thread's aligned bounce buffer.
uint8_t* Bounce() {
  struct Deleter {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<uint8_t, Deleter> buffer(
      static_cast<uint8_t*>(std::aligned_alloc(kAlign, kBounce)));
  return buffer.get();
}

}  // namespace

absl::StatusOr<std::unique_ptr<DirectFileStore>> DirectFileStore::Create(absl::string_view dir,
                                                                         absl::string_view name,
                                                                         uint64_t size) {
  return OpenFile(dir, name, size, /*truncate=*/true);
}

absl::StatusOr<std::unique_ptr<DirectFileStore>> DirectFileStore::Open(absl::string_view dir,
                                                                       absl::string_view name,
                                                                       uint64_t size) {
  return OpenFile(dir, name, size, /*truncate=*/false);
}

absl::StatusOr<std::unique_ptr<DirectFileStore>> DirectFileStore::OpenFile(absl::string_view dir,
                                                                           absl::string_view name,
                                                                           uint64_t size,
                                                                           bool truncate) {
  std::string path = absl::StrCat(dir, "/", name);
  // A fresh file is a new inode: a name left behind by an interrupted
  // rename may still be a second link to another region's data, which
  // O_TRUNC would empty (docs/store.md, "Unlink and rename").
  if (truncate && unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, absl::StrCat("removing stale store file ", path));
  }
  const int flags = O_RDWR | O_CREAT | O_CLOEXEC | (truncate ? O_TRUNC : 0);
  bool direct = true;
  UniqueFd fd(open(path.c_str(), flags | O_DIRECT, 0600));
  if (!fd.valid() && errno == EINVAL) {
    LogWarning("%s: no O_DIRECT on this filesystem; store pages will also be cached", path);
    direct = false;
    fd.reset(open(path.c_str(), flags, 0600));
  }
  if (!fd.valid()) return ErrnoStatus(errno, absl::StrCat("opening store file ", path));
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("sizing store file ", path));
  }
  return std::unique_ptr<DirectFileStore>(
      new DirectFileStore(std::move(fd), std::move(path), size, direct));
}

DirectFileStore::DirectFileStore(UniqueFd fd, std::string path, uint64_t size, bool direct)
    : fd_(std::move(fd)), path_(std::move(path)), size_(size), direct_(direct) {}

absl::Status DirectFileStore::ReadAligned(uint64_t offset, uint8_t* buf, size_t len) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd_.get(), buf + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("reading ", path_));
    }
    if (n == 0) {  // past the end of the file: reads as zero, like a hole
      std::memset(buf + done, 0, len - done);
      break;
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status DirectFileStore::WriteAligned(uint64_t offset, const uint8_t* buf, size_t len) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(fd_.get(), buf + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("writing ", path_));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status DirectFileStore::Read(uint64_t offset, std::span<uint8_t> out) {
  if (!direct_ || (Aligned(offset) && Aligned(out.size()) && Aligned(out.data()))) {
    return ReadAligned(offset, out.data(), out.size());
  }
  uint8_t* bounce = Bounce();
  for (size_t done = 0; done < out.size();) {
    const uint64_t at = offset + done;
    const uint64_t base = at / kAlign * kAlign;
    const size_t skip = at - base;
    const size_t n = std::min(out.size() - done, kBounce - skip);
    const size_t span = (skip + n + kAlign - 1) / kAlign * kAlign;
    if (absl::Status s = ReadAligned(base, bounce, span); !s.ok()) return s;
    std::memcpy(out.data() + done, bounce + skip, n);
    done += n;
  }
  return absl::OkStatus();
}

absl::Status DirectFileStore::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (!direct_ || (Aligned(offset) && Aligned(data.size()) && Aligned(data.data()))) {
    return WriteAligned(offset, data.data(), data.size());
  }
  uint8_t* bounce = Bounce();
  for (size_t done = 0; done < data.size();) {
    const uint64_t at = offset + done;
    const uint64_t base = at / kAlign * kAlign;
    const size_t skip = at - base;
    const size_t n = std::min(data.size() - done, kBounce - skip);
    const size_t span = (skip + n + kAlign - 1) / kAlign * kAlign;
    // Partly covered first and last pages keep their other bytes.
    if (skip != 0) {
      if (absl::Status s = ReadAligned(base, bounce, kAlign); !s.ok()) return s;
    }
    if ((skip + n) % kAlign != 0 && (span > kAlign || skip == 0)) {
      if (absl::Status s = ReadAligned(base + span - kAlign, bounce + span - kAlign, kAlign);
          !s.ok()) {
        return s;
      }
    }
    std::memcpy(bounce + skip, data.data() + done, n);
    if (absl::Status s = WriteAligned(base, bounce, span); !s.ok()) return s;
    done += n;
  }
  return absl::OkStatus();
}

uint64_t DirectFileStore::AllocatedBytes() const {
  struct stat st;
  if (fstat(fd_.get(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

absl::Status DirectFileStore::Punch(uint64_t offset, uint64_t length) {
  if (length == 0) return absl::OkStatus();
  if (fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                static_cast<off_t>(length)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("punching a hole in ", path_));
  }
  return absl::OkStatus();
}

absl::Status DirectFileStore::Sync() {
  if (fdatasync(fd_.get()) != 0) return ErrnoStatus(errno, absl::StrCat("syncing ", path_));
  return absl::OkStatus();
}

absl::Status DirectFileStore::Resize(uint64_t size) {
  if (ftruncate(fd_.get(), static_cast<off_t>(size)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("resizing ", path_));
  }
  size_.store(size, std::memory_order_release);
  return absl::OkStatus();
}

}  // namespace lazyram
