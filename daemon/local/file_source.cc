#include "daemon/local/file_source.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "daemon/base/errno_status.h"
#include "daemon/protocol/region_name.h"

namespace lazyram {
namespace {

using protocol::kPageSize;

// Page-aligned holes of `fd` as zero extents.
std::vector<protocol::ZeroExtent> FindHoles(int fd, uint64_t size) {
  std::vector<protocol::ZeroExtent> out;
  off_t pos = 0;
  while (static_cast<uint64_t>(pos) < size) {
    const off_t hole = lseek(fd, pos, SEEK_HOLE);
    if (hole < 0 || static_cast<uint64_t>(hole) >= size) break;
    const off_t data = lseek(fd, hole, SEEK_DATA);
    const uint64_t end = data < 0 ? size : static_cast<uint64_t>(data);
    const uint64_t first = (static_cast<uint64_t>(hole) + kPageSize - 1) / kPageSize;
    // A hole that runs to the end of the file covers the partial last page.
    const uint64_t last = end >= size ? (size + kPageSize - 1) / kPageSize : end / kPageSize;
    if (last > first) out.push_back({first, last - first});
    if (data < 0) break;
    pos = data;
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<FileSource>> FileSource::Open(absl::string_view path) {
  std::unique_ptr<FileSource> source(new FileSource(std::string(path)));
  struct stat st;
  if (stat(source->path_.c_str(), &st) != 0) {
    return ErrnoStatus(errno, absl::StrCat("cannot open RAM source ", path));
  }
  if (!S_ISDIR(st.st_mode)) {
    std::string name = source->path_.substr(source->path_.find_last_of('/') + 1);
    if (absl::Status s = source->Add(std::move(name), source->path_, true); !s.ok()) return s;
    return source;
  }
  DIR* dir = opendir(source->path_.c_str());
  if (dir == nullptr) return ErrnoStatus(errno, absl::StrCat("cannot list ", path));
  std::vector<std::string> names;
  while (dirent* e = readdir(dir)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(std::move(name));
  }
  closedir(dir);
  std::sort(names.begin(), names.end());
  for (std::string& name : names) {
    const std::string file = absl::StrCat(source->path_, "/", name);
    if (absl::Status s = source->Add(std::move(name), file, false); !s.ok()) return s;
  }
  if (source->regions_.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("RAM source directory ", path, " holds no non-empty regular file"));
  }
  return source;
}

absl::Status FileSource::Add(std::string name, const std::string& file, bool must_be_usable) {
  // O_NOFOLLOW is not used: /dev/shm/mem0 may well be a link to the real file.
  UniqueFd fd(open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus(errno, absl::StrCat("cannot open RAM file ", file));
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", file));
  if (!S_ISREG(st.st_mode) || st.st_size == 0) {
    if (!must_be_usable) return absl::OkStatus();  // a directory's other entries
    return absl::InvalidArgumentError(absl::StrCat(
        "RAM file ", file, S_ISREG(st.st_mode) ? " is empty" : " is not a regular file"));
  }
  if (absl::Status s = ValidateRegionName(name); !s.ok()) return s;
  protocol::RegionInfo info{std::move(name), static_cast<uint64_t>(st.st_size), {}};
  info.zero_extents = FindHoles(fd.get(), info.size);
  regions_.push_back(std::move(info));
  files_.push_back(std::move(fd));
  return absl::OkStatus();
}

PageLocation FileSource::Locate(uint32_t region, uint64_t page) const {
  const uint64_t offset = page * kPageSize;
  const uint64_t size = regions_[region].size;
  PageLocation loc;
  loc.kind = PageLocation::Kind::kFile;
  loc.fd = files_[region].get();
  loc.offset = offset;
  loc.length = static_cast<uint32_t>(std::min<uint64_t>(kPageSize, size - offset));
  return loc;
}

}  // namespace lazyram
