#include "tools/bench/images.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_format.h"
#include "tools/bench/bench_util.h"

namespace lazyram::bench {
namespace {

void FillRandom(std::vector<uint8_t>& buf, std::mt19937_64& rng) {
  for (size_t i = 0; i + 8 <= buf.size(); i += 8) {
    const uint64_t v = rng();
    std::memcpy(&buf[i], &v, 8);
  }
}

void WriteAt(int fd, const std::vector<uint8_t>& buf, size_t length, uint64_t offset,
             const std::string& path) {
  for (size_t done = 0; done < length;) {
    const ssize_t n =
        pwrite(fd, buf.data() + done, length - done, static_cast<off_t>(offset + done));
    if (n <= 0) FailErrno("writing " + path);
    done += static_cast<size_t>(n);
  }
}

int CreateFile(const std::string& path, uint64_t size) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) FailErrno("creating " + path);
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    close(fd);
    FailErrno("sizing " + path);
  }
  return fd;
}

}  // namespace

ScratchFile::~ScratchFile() {
  if (!path_.empty()) unlink(path_.c_str());
}

ScratchFile WriteRandomImage(const std::string& path, uint64_t size, uint64_t seed) {
  ScratchFile file(path);
  const int fd = CreateFile(path, size);
  const absl::Cleanup close_fd = [fd] { close(fd); };
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> chunk(8 * kMiB);
  for (uint64_t offset = 0; offset < size; offset += chunk.size()) {
    FillRandom(chunk, rng);
    WriteAt(fd, chunk, std::min<uint64_t>(chunk.size(), size - offset), offset, path);
  }
  return file;
}

ScratchFile WriteSparseImage(const std::string& path, uint64_t size,
                             const std::vector<uint64_t>& data_offsets, uint64_t seed) {
  ScratchFile file(path);
  const int fd = CreateFile(path, size);
  const absl::Cleanup close_fd = [fd] { close(fd); };
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> page(kPage);
  for (uint64_t offset : data_offsets) {
    FillRandom(page, rng);
    WriteAt(fd, page, page.size(), offset / kPage * kPage, path);
  }
  return file;
}

ScratchFile TmpfsCopy(const std::string& image) {
  if (!IsTmpfs("/dev/shm")) Fail("/dev/shm is not a tmpfs: no tmpfs baseline");
  const std::string path = "/dev/shm/lazyram-bench-" + std::to_string(getpid()) + "-" +
                           std::filesystem::path(image).filename().string();
  ScratchFile copy(path);
  std::error_code error;
  std::filesystem::copy_file(image, path, std::filesystem::copy_options::overwrite_existing, error);
  if (error) Fail("copying " + image + " to tmpfs: " + error.message());
  return copy;
}

double ReadWholeFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) FailErrno("open " + path);
  std::vector<char> buf(kMiB);
  const Stopwatch watch;
  uint64_t got = 0;
  for (ssize_t n; (n = pread(fd, buf.data(), buf.size(), static_cast<off_t>(got))) > 0;) {
    got += static_cast<uint64_t>(n);
  }
  const double seconds = watch.Seconds();
  close(fd);
  return static_cast<double>(got) / 1e6 / seconds;
}

bool IsTmpfs(const std::string& path) {
  struct statfs fs;
  return statfs(path.c_str(), &fs) == 0 && fs.f_type == TMPFS_MAGIC;
}

std::string FilesystemType(const std::string& path) {
  struct statfs fs;
  if (statfs(path.c_str(), &fs) != 0) FailErrno("statfs " + path);
  switch (fs.f_type) {
    case EXT4_SUPER_MAGIC:
      return "ext4";
    case XFS_SUPER_MAGIC:
      return "xfs";
    case BTRFS_SUPER_MAGIC:
      return "btrfs";
    case TMPFS_MAGIC:
      return "tmpfs";
    default:
      return absl::StrFormat("0x%x", static_cast<uint64_t>(fs.f_type));
  }
}

std::string ShmemHugePages() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  std::string word;
  while (in >> word) {
    if (word.front() == '[') return word.substr(1, word.size() - 2);
  }
  return "unknown";
}

DiskDir::DiskDir(const std::string& parent) {
  std::string base = parent;
  if (IsTmpfs(base)) base = "/var/tmp";
  if (IsTmpfs(base)) Fail("no disk-backed directory: " + parent + " and /var/tmp are tmpfs");
  std::string tmpl = base + "/lazyram-bench-store-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) FailErrno("mkdtemp under " + base);
  path_ = tmpl;
}

DiskDir::~DiskDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

}  // namespace lazyram::bench
