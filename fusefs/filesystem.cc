#include "fusefs/filesystem.h"

#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/base/log.h"
#include "fusefs/bdi_tuning.h"
#include "fusefs/filesystem_ops.h"

namespace lazyram::fusefs {
namespace {

timespec Now() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts;
}

}  // namespace

Filesystem::Filesystem(Parts parts, Options options)
    : parts_(parts), options_(std::move(options)), mount_time_(Now()) {}

absl::StatusOr<std::unique_ptr<Filesystem>> Filesystem::Mount(Parts parts, Options options) {
  char resolved[PATH_MAX];
  if (realpath(options.mountpoint.c_str(), resolved) == nullptr) {
    return absl::NotFoundError(absl::StrCat("mount point ", options.mountpoint, " does not exist"));
  }
  struct stat st;
  if (stat(resolved, &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("mount point ", options.mountpoint, " is not a directory"));
  }
  options.mountpoint = resolved;
  std::unique_ptr<Filesystem> fs(new Filesystem(parts, std::move(options)));

  std::string mount_opts = "fsname=lazyram,subtype=lazyram,default_permissions";
  if (fs->options_.allow_other) mount_opts += ",allow_other";
  if (fs->options_.read_only) mount_opts += ",ro";
  if (parts.views != nullptr) {
    fs->views_ = std::make_unique<ViewsDir>(parts.views, fs->options_.read_only, fs->mount_time_,
                                            getuid(), getgid());
  }
  std::vector<std::string> args = {"lazyramd", "-o", mount_opts};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  fuse_args fargs = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  fs->session_ = fuse_session_new(&fargs, &FilesystemOps(), sizeof(fuse_lowlevel_ops), fs.get());
  if (fs->session_ == nullptr) return absl::InternalError("cannot create the FUSE session");
  if (fuse_session_mount(fs->session_, fs->options_.mountpoint.c_str()) != 0) {
    fuse_session_destroy(fs->session_);
    fs->session_ = nullptr;
    return absl::UnavailableError(
        absl::StrCat("cannot mount on ", fs->options_.mountpoint, " (is /dev/fuse available?)"));
  }
  if (fs->options_.passthrough && parts.regions->memory_store()) {
    if (absl::Status s = fs->InstallChannel(); !s.ok()) {
      LogWarning("FUSE passthrough is off: %s", s.message());
    }
  }
  fs->passthrough_ = std::make_unique<PassthroughPolicy>(parts.regions, fs->channel_.get());
  PassthroughPolicy* policy = fs->passthrough_.get();
  parts.status->SetSection("passthrough", [policy] { return policy->StatusJson(); });
  parts.status->SetRegionHook(
      [policy](size_t index, nlohmann::json* region) { policy->AddRegionStatus(index, region); });
  if (fs->options_.push && !fs->options_.read_only) {
    // A region whose files open in passthrough mode has no page cache
    // anyone reads: nothing to warm.
    fs->pusher_ = std::make_unique<PagePusher>(
        parts.regions, fs->options_.mountpoint,
        [policy](size_t index) { return policy->WouldPassthrough(index); });
    PagePusher* p = fs->pusher_.get();
    parts.status->SetSection("push", [p] { return p->StatusJson(); });
  } else {
    parts.status->SetSection("push", [] { return nlohmann::json{{"enabled", false}}; });
  }
  if (absl::Status s = RaiseWritebackLimits(fs->options_.mountpoint); !s.ok()) {
    LogWarning("guest writes may be slow: %s", s.message());
  }
  return fs;
}

Filesystem::~Filesystem() {
  parts_.status->SetSection("push", nullptr);
  parts_.status->SetSection("passthrough", nullptr);
  parts_.status->SetRegionHook(nullptr);
  pusher_.reset();
  if (session_ == nullptr) return;
  if (passthrough_ != nullptr) passthrough_->CloseBackings();
  fuse_session_unmount(session_);
  fuse_session_destroy(session_);
}

absl::Status Filesystem::InstallChannel() {
  // The session reads requests from, and writes replies to, this channel;
  // the hooks find it through the session's userdata (this Filesystem).
  fuse_custom_io io{};
  io.read = [](int fd, void* buf, size_t len, void* userdata) -> ssize_t {
    return static_cast<Filesystem*>(userdata)->channel_->Read(fd, buf, len);
  };
  io.writev = [](int fd, struct iovec* iov, int count, void* userdata) -> ssize_t {
    return static_cast<Filesystem*>(userdata)->channel_->Writev(fd, iov, count);
  };
  const int fd = fuse_session_fd(session_);
  channel_ = std::make_unique<PassthroughChannel>(fd);
  // Called after fuse_session_mount: the same descriptor, now read and
  // written through the hooks; splice stays off (no splice hooks).
  if (const int rc = fuse_session_custom_io(session_, &io, fd); rc != 0) {
    channel_.reset();
    return absl::InternalError(
        absl::StrCat("fuse_session_custom_io failed: ", std::strerror(rc < 0 ? -rc : rc)));
  }
  return absl::OkStatus();
}

absl::Status Filesystem::Run() {
  fuse_loop_config* config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_max_threads(config, static_cast<unsigned>(options_.max_threads));
  fuse_loop_cfg_set_idle_threads(config, 4);
  int rc = fuse_session_loop_mt(session_, config);
  fuse_loop_cfg_destroy(config);
  // The loop ends with ENODEV once the kernel drops the connection (the
  // normal end after an unmount).
  if (rc != 0 && rc != -ENODEV && !fuse_session_exited(session_)) {
    return absl::InternalError(absl::StrCat("FUSE loop failed: ", std::strerror(-rc)));
  }
  return absl::OkStatus();
}

absl::Status Filesystem::Unmount(bool lazy) {
  // The pusher's own descriptors must not make the mount busy.
  if (pusher_ != nullptr) pusher_->Pause();
  if (umount2(options_.mountpoint.c_str(), lazy ? MNT_DETACH : 0) == 0) return absl::OkStatus();
  const int error = errno;
  if (pusher_ != nullptr) pusher_->Resume();
  errno = error;
  if (errno == EBUSY) {
    return absl::FailedPreconditionError(
        absl::StrCat("mount point ", options_.mountpoint,
                     " is busy: a process still has a file open or mapped; stop it first"));
  }
  return absl::InternalError(
      absl::StrCat("cannot unmount ", options_.mountpoint, ": ", std::strerror(errno)));
}

void Filesystem::AddLookup(size_t index) {
  absl::MutexLock lock(&lookups_mu_);
  ++lookups_[index];
}

void Filesystem::Forget(size_t index, uint64_t count) {
  {
    absl::MutexLock lock(&lookups_mu_);
    auto it = lookups_.find(index);
    if (it == lookups_.end()) return;
    if (it->second > count) {
      it->second -= count;
      return;
    }
    lookups_.erase(it);
  }
  // Forgotten. An unlinked region cannot be looked up again (it has no
  // name), so nothing revives it between here and the release.
  Region* region = parts_.regions->region(index);
  if (region != nullptr && region->unlinked()) parts_.regions->ReleaseRegion(index);
}

void Filesystem::ReleaseIfForgotten(size_t index) {
  {
    absl::MutexLock lock(&lookups_mu_);
    if (lookups_.contains(index)) return;
  }
  parts_.regions->ReleaseRegion(index);
}

struct stat Filesystem::RootAttr() const {
  struct stat st {};
  st.st_ino = FUSE_ROOT_ID;
  st.st_mode = S_IFDIR | 0755;
  st.st_nlink = 2;
  st.st_uid = getuid();
  st.st_gid = getgid();
  st.st_atim = st.st_mtim = st.st_ctim = mount_time_;
  return st;
}

struct stat Filesystem::RegionAttr(size_t index) const {
  struct stat st {};
  Region* region = parts_.regions->region(index);
  st.st_ino = index + 2;
  st.st_mode = S_IFREG | 0600;
  st.st_nlink = 1;
  st.st_uid = getuid();
  st.st_gid = getgid();
  st.st_size = static_cast<off_t>(region->size());
  st.st_blksize = 4096;
  st.st_blocks = static_cast<blkcnt_t>((region->size() + 511) / 512);
  st.st_atim = st.st_mtim = st.st_ctim = mount_time_;
  return st;
}

}  // namespace lazyram::fusefs
