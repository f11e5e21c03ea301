#include "tools/bench/mapping.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "tools/bench/bench_util.h"

namespace lazyram::bench {

Mapping::Mapping(const std::string& path, const Options& options) {
  const bool writable = options.access == Access::kReadWrite;
  fd_ = open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (fd_ < 0) FailErrno("open " + path);
  // The destructor does not run for a constructor that throws.
  auto fail = [&](const std::string& what) {
    const int e = errno;
    if (data_ != nullptr) munmap(data_, size_);
    close(fd_);
    errno = e;
    FailErrno(what);
  };
  struct stat st;
  if (fstat(fd_, &st) != 0) fail("stat " + path);
  size_ = static_cast<uint64_t>(st.st_size);
  // Reserve 2 MiB more than needed, then map the file over the aligned
  // start of the reservation and give back the rest.
  const uint64_t reserved = size_ + kHugePage;
  auto* base = static_cast<uint8_t*>(
      mmap(nullptr, reserved, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
  if (base == MAP_FAILED) fail("reserving address space for " + path);
  const uint64_t misalign = reinterpret_cast<uintptr_t>(base) % kHugePage;
  uint8_t* aligned = base + (misalign == 0 ? 0 : kHugePage - misalign);
  const int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  const int flags = MAP_SHARED | MAP_FIXED | (options.populate ? MAP_POPULATE : 0);
  if (mmap(aligned, size_, prot, flags, fd_, 0) == MAP_FAILED) {
    const int e = errno;
    munmap(base, reserved);
    errno = e;
    fail("mmap " + path);
  }
  if (aligned > base) munmap(base, static_cast<size_t>(aligned - base));
  uint8_t* end = aligned + size_;
  if (end < base + reserved) munmap(end, static_cast<size_t>(base + reserved - end));
  data_ = aligned;
  if (options.advice != 0 && madvise(data_, size_, options.advice) != 0) fail("madvise " + path);
}

Mapping::Mapping(Mapping&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

Mapping::~Mapping() {
  if (data_ != nullptr) munmap(data_, size_);
  if (fd_ >= 0) close(fd_);
}

double TouchOnce(const Mapping& mapping, uint64_t offset) {
  const Stopwatch watch;
  (void)*static_cast<volatile uint8_t*>(mapping.data() + offset);
  return watch.Micros();
}

std::vector<double> TouchEach(const Mapping& mapping, const std::vector<uint64_t>& offsets) {
  std::vector<double> us;
  us.reserve(offsets.size());
  for (uint64_t offset : offsets) us.push_back(TouchOnce(mapping, offset));
  return us;
}

double WriteOnce(const Mapping& mapping, uint64_t offset, uint64_t value) {
  const Stopwatch watch;
  *reinterpret_cast<volatile uint64_t*>(mapping.data() + offset) = value;
  return watch.Micros();
}

double FillPage(const Mapping& mapping, uint64_t offset, uint8_t byte) {
  const Stopwatch watch;
  std::memset(mapping.data() + offset / kPage * kPage, byte, kPage);
  return watch.Micros();
}

bool IsResident(const Mapping& mapping, uint64_t offset) {
  unsigned char vec = 0;
  if (mincore(mapping.data() + offset / kPage * kPage, kPage, &vec) != 0) FailErrno("mincore");
  return (vec & 1) != 0;
}

}  // namespace lazyram::bench
