// Images the cases serve, their tmpfs copies (the baseline), and scratch
// files and directories removed when the case is done.
#ifndef LAZYRAM_TOOLS_BENCH_IMAGES_H_
#define LAZYRAM_TOOLS_BENCH_IMAGES_H_

#include <cstdint>
#include <string>
#include <vector>

namespace lazyram::bench {

// A file the case created, removed on destruction; move-only.
class ScratchFile {
 public:
  explicit ScratchFile(std::string path) : path_(std::move(path)) {}
  ~ScratchFile();
  ScratchFile(ScratchFile&& other) noexcept : path_(std::move(other.path_)) { other.path_.clear(); }
  ScratchFile& operator=(ScratchFile&&) = delete;
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// `size` bytes of random data from `seed` (no zero pages), streamed to disk.
ScratchFile WriteRandomImage(const std::string& path, uint64_t size, uint64_t seed);
// A sparse file of `size` bytes: a hole except 4 KiB of random data at each
// page-aligned offset in `data_offsets`. Cheap at any size.
ScratchFile WriteSparseImage(const std::string& path, uint64_t size,
                             const std::vector<uint64_t>& data_offsets, uint64_t seed);
// A copy of `image` on tmpfs (/dev/shm): the baseline the cases compare
// mapped lazyram files against. Fails when /dev/shm is not tmpfs.
ScratchFile TmpfsCopy(const std::string& image);

// Reads the whole file with 1 MiB preads; MB/s.
double ReadWholeFile(const std::string& path);

// True when `path` lies on a tmpfs.
bool IsTmpfs(const std::string& path);
// The filesystem `path` lies on: "ext4", "xfs", "btrfs", "tmpfs", or the
// statfs magic in hex.
std::string FilesystemType(const std::string& path);
// The value in /sys/kernel/mm/transparent_hugepage/shmem_enabled, e.g.
// "never": whether tmpfs mappings get huge pages at all.
std::string ShmemHugePages();

// A fresh directory on a disk-backed filesystem (not tmpfs): under
// `parent` when that is on disk, else under /var/tmp. Removed (recursively)
// on destruction.
class DiskDir {
 public:
  explicit DiskDir(const std::string& parent);
  ~DiskDir();
  DiskDir(const DiskDir&) = delete;
  DiskDir& operator=(const DiskDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace lazyram::bench

#endif  // LAZYRAM_TOOLS_BENCH_IMAGES_H_
