#include "daemon/core/state_file.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "daemon/base/errno_status.h"

namespace lazyram {
namespace {

constexpr char kMagic[8] = {'L', 'Z', 'R', 'S', 'T', 'A', 'T', 'E'};
constexpr uint32_t kVersion = 1;

// The header as it lies at offset 0 (little-endian, x86-64 layout);
// docs/store.md describes it field by field.
struct DiskHeader {
  char magic[8];
  uint32_t version;
  uint32_t page_size;
  uint64_t size;            // region bytes
  uint64_t capacity_pages;  // page state bytes after the header
  uint64_t source_id;       // 0: a region without a source
  uint32_t index;           // in the source's region table
  uint8_t base;             // PageState stored as 0
  uint8_t clean;            // 1: synced and closed by a clean shutdown
  uint8_t has_source;
  uint8_t reserved;
  char boot_id[40];  // NUL-terminated: the boot that last used the file
  uint16_t name_len;
  char name[256];
};
static_assert(sizeof(DiskHeader) <= StateFile::kMapOffset);
static_assert(offsetof(DiskHeader, boot_id) == 48 && offsetof(DiskHeader, name) == 90);

std::string StateDir(absl::string_view store_dir) {
  return absl::StrCat(store_dir, "/", StateFile::kDirName);
}

std::string StatePath(absl::string_view store_dir, absl::string_view name) {
  return absl::StrCat(StateDir(store_dir), "/", name, ".state");
}

}  // namespace

const std::string& StateFile::CurrentBootId() {
  static const std::string* id = [] {
    std::ifstream in("/proc/sys/kernel/random/boot_id");
    std::string s;
    std::getline(in, s);
    return new std::string(absl::StripAsciiWhitespace(s));
  }();
  return *id;
}

absl::StatusOr<UniqueFd> StateFile::LockStore(absl::string_view store_dir) {
  const std::string dir = StateDir(store_dir);
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoStatus(errno, absl::StrCat("creating ", dir));
  }
  const std::string path = absl::StrCat(dir, "/lock");
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd.valid()) return ErrnoStatus(errno, absl::StrCat("opening ", path));
  if (flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return ErrnoStatus(errno, absl::StrCat("locking ", path));
    char buf[32] = {};
    ssize_t n = pread(fd.get(), buf, sizeof buf - 1, 0);
    std::string pid = n > 0 ? std::string(absl::StripAsciiWhitespace(buf)) : "unknown";
    return absl::FailedPreconditionError(absl::StrCat(
        "store directory ", store_dir, " is in use by another lazyramd (pid ", pid, ")"));
  }
  const std::string pid = absl::StrCat(getpid(), "\n");
  if (ftruncate(fd.get(), 0) != 0 || pwrite(fd.get(), pid.data(), pid.size(), 0) < 0) {
    return ErrnoStatus(errno, absl::StrCat("writing ", path));
  }
  return fd;
}

StateFile::StateFile(UniqueFd fd, std::string path, Identity identity)
    : fd_(std::move(fd)), path_(std::move(path)), identity_(std::move(identity)) {
  absl::MutexLock lock(&mu_);
  size_ = identity_.size;
}

absl::StatusOr<std::unique_ptr<StateFile>> StateFile::Open(absl::string_view store_dir,
                                                           absl::string_view name) {
  std::string path = StatePath(store_dir, name);
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("no state file ", path));
    return ErrnoStatus(errno, absl::StrCat("opening ", path));
  }
  DiskHeader h{};
  struct stat st;
  if (pread(fd.get(), &h, sizeof h, 0) != static_cast<ssize_t>(sizeof h) ||
      fstat(fd.get(), &st) != 0) {
    return absl::DataLossError(absl::StrCat(path, " is too short to be a lazyram state file"));
  }
  auto bad = [&](absl::string_view what) {
    return absl::DataLossError(
        absl::StrCat(path, " is not a usable lazyram state file (", what,
                     "); remove the store directory's contents to start over"));
  };
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0) return bad("bad magic");
  if (h.version != kVersion) return bad(absl::StrCat("version ", h.version));
  if (h.page_size != protocol::kPageSize) return bad(absl::StrCat("page size ", h.page_size));
  if (h.base >= kNumPageStates) return bad("bad base state");
  if (h.name_len > sizeof h.name) return bad("bad name length");
  // The file's name is the region's: a rename (StoreDir::Rename) renames
  // the file first and rewrites the header's name after, so a kill between
  // the two leaves the old name in the header.

  const uint64_t pages = (h.size + protocol::kPageSize - 1) / protocol::kPageSize;
  if (pages > h.capacity_pages ||
      static_cast<uint64_t>(st.st_size) < kMapOffset + h.capacity_pages) {
    return bad("its size does not match its header");
  }
  h.boot_id[sizeof h.boot_id - 1] = '\0';
  Identity id{std::string(name), h.size, h.capacity_pages, h.has_source != 0, h.source_id, h.index};
  std::unique_ptr<StateFile> file(new StateFile(std::move(fd), path, std::move(id)));
  file->final_path_ = std::move(path);
  file->restored_ = true;
  file->base_ = static_cast<PageState>(h.base);
  file->was_clean_ = h.clean == 1;
  file->boot_id_ = h.boot_id;
  return file;
}

absl::StatusOr<std::unique_ptr<StateFile>> StateFile::Create(absl::string_view store_dir,
                                                             const Identity& identity) {
  std::string final_path = StatePath(store_dir, identity.name);
  std::string path = absl::StrCat(final_path, ".new");
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid()) return ErrnoStatus(errno, absl::StrCat("creating ", path));
  // Sparse: an untouched map costs no disk.
  const uint64_t bytes = kMapOffset + std::max<uint64_t>(identity.capacity_pages, 1);
  if (ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("sizing ", path));
  }
  std::unique_ptr<StateFile> file(new StateFile(std::move(fd), std::move(path), identity));
  file->final_path_ = std::move(final_path);
  return file;
}

absl::Status StateFile::CheckUsable(absl::string_view store_dir) const {
  if (was_clean_ || boot_id_ == CurrentBootId()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "store directory ", store_dir, " was not shut down cleanly before the machine restarted (",
      identity_.name,
      "): after a power loss its pages cannot be trusted; empty the directory (or use another) "
      "to fetch everything again"));
}

absl::StatusOr<PageMap> StateFile::MapPages(uint64_t pages, PageState base) {
  if (!restored_) base_ = base;
  return PageMap::CreateInFile(fd_.get(), kMapOffset, pages, identity_.capacity_pages, base_);
}

void StateFile::Recover(PageMap* map) const {
  const off_t end = static_cast<off_t>(kMapOffset + map->size());
  off_t pos = static_cast<off_t>(kMapOffset);
  // Only the file's data needs looking at: a hole is all base state.
  while (pos < end) {
    off_t data = lseek(fd_.get(), pos, SEEK_DATA);
    if (data < 0 || data >= end) break;
    off_t hole = lseek(fd_.get(), data, SEEK_HOLE);
    if (hole < 0 || hole > end) hole = end;
    map->Recover(static_cast<uint64_t>(data) - kMapOffset, static_cast<uint64_t>(hole - data));
    pos = hole;
  }
}

absl::Status StateFile::WriteHeader(bool sync) {
  DiskHeader h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = kVersion;
  h.page_size = protocol::kPageSize;
  h.size = size_;
  h.capacity_pages = identity_.capacity_pages;
  h.source_id = identity_.source_id;
  h.index = identity_.index;
  h.base = static_cast<uint8_t>(base_);
  h.clean = clean_ ? 1 : 0;
  h.has_source = identity_.has_source ? 1 : 0;
  const std::string& boot = CurrentBootId();
  std::memcpy(h.boot_id, boot.data(), std::min(boot.size(), sizeof h.boot_id - 1));
  h.name_len = static_cast<uint16_t>(std::min(identity_.name.size(), sizeof h.name));
  std::memcpy(h.name, identity_.name.data(), h.name_len);
  if (pwrite(fd_.get(), &h, sizeof h, 0) != static_cast<ssize_t>(sizeof h)) {
    return ErrnoStatus(errno, absl::StrCat("writing the header of ", path_));
  }
  if (sync && fdatasync(fd_.get()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("syncing ", path_));
  }
  return absl::OkStatus();
}

absl::Status StateFile::Commit(PageState base) {
  absl::MutexLock lock(&mu_);
  clean_ = false;
  if (restored_) {
    // Durable before the first change: after a power loss from here on,
    // the file must say it was in use.
    return WriteHeader(/*sync=*/true);
  }
  base_ = base;
  if (absl::Status s = WriteHeader(/*sync=*/false); !s.ok()) return s;
  if (rename(path_.c_str(), final_path_.c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("renaming ", path_));
  }
  path_ = final_path_;
  // The new names (this file's, and the data file's beside the state
  // folder) must outlive a power loss once a checkpoint calls the file
  // clean: a region without a source would vanish with them.
  const std::string state_dir = std::filesystem::path(path_).parent_path();
  for (const std::string& dir :
       {state_dir, std::filesystem::path(state_dir).parent_path().string()}) {
    UniqueFd fd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.valid() || fsync(fd.get()) != 0) {
      return ErrnoStatus(errno, absl::StrCat("syncing the directory ", dir));
    }
  }
  return absl::OkStatus();
}

absl::Status StateFile::Rename(absl::string_view store_dir, absl::string_view name) {
  absl::MutexLock lock(&mu_);
  const std::string to = StatePath(store_dir, name);
  if (rename(path_.c_str(), to.c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("renaming ", path_, " to ", to));
  }
  path_ = final_path_ = to;
  identity_.name = std::string(name);
  if (absl::Status s = WriteHeader(/*sync=*/true); !s.ok()) return s;
  return SyncDir(StateDir(store_dir));
}

absl::Status StateFile::Remove(absl::string_view store_dir, absl::string_view name) {
  const std::string path = StatePath(store_dir, name);
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, absl::StrCat("removing ", path));
  }
  return SyncDir(StateDir(store_dir));
}

absl::Status StateFile::SyncDir(const std::string& dir) {
  UniqueFd fd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid() || fsync(fd.get()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("syncing the directory ", dir));
  }
  return absl::OkStatus();
}

absl::Status StateFile::SetSize(uint64_t size) {
  absl::MutexLock lock(&mu_);
  size_ = size;
  clean_ = false;
  return WriteHeader(/*sync=*/false);
}

absl::Status StateFile::Sync() {
  // The map is a shared mapping of this file: fdatasync writes its dirty
  // pages back like any other (msync(MS_SYNC) would do the same).
  if (fdatasync(fd_.get()) != 0) return ErrnoStatus(errno, absl::StrCat("syncing ", path_));
  return absl::OkStatus();
}

absl::Status StateFile::MarkClean() {
  absl::MutexLock lock(&mu_);
  clean_ = true;
  return WriteHeader(/*sync=*/true);
}

absl::Status StateFile::MarkInUse() {
  absl::MutexLock lock(&mu_);
  clean_ = false;
  return WriteHeader(/*sync=*/true);
}

uint64_t SourceId(const std::vector<protocol::RegionInfo>& regions) {
  // FNV-1a: stable across builds and processes, unlike absl::Hash.
  uint64_t h = 0xcbf29ce484222325ULL;
  auto mix = [&h](const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
  };
  auto mix64 = [&mix](uint64_t v) { mix(&v, sizeof v); };
  mix64(regions.size());
  for (const protocol::RegionInfo& r : regions) {
    mix64(r.name.size());
    mix(r.name.data(), r.name.size());
    mix64(r.size);
    mix64(r.zero_extents.size());
    for (const protocol::ZeroExtent& e : r.zero_extents) {
      mix64(e.first_page);
      mix64(e.page_count);
    }
  }
  return h == 0 ? 1 : h;
}

}  // namespace lazyram
