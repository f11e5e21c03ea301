// Filesystem: the kernel-facing layer. Mounts a FUSE filesystem whose root
// holds one regular file per region of a RegionSet, and maps libfuse low-level
// requests onto Region calls. Inode numbers are region index + 2 (1 is the
// root) and never reused: an unlinked region keeps its slot (and inode)
// for good; once the kernel has forgotten it (lookup counting below) its
// store is freed (RegionSet::ReleaseRegion).
//
// Threading: Run serves on libfuse's worker threads, which never block on
// the network — a READ of absent pages is answered from the thread that
// lands them. Unmount may be called from any other thread.
#ifndef LAZYRAM_FUSEFS_FILESYSTEM_H_
#define LAZYRAM_FUSEFS_FILESYSTEM_H_

#include <sys/stat.h>

#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/control/status_sections.h"
#include "daemon/core/region_set.h"
#include "daemon/forensics/forensic_views.h"
#include "fusefs/page_pusher.h"
#include "fusefs/passthrough_channel.h"
#include "fusefs/passthrough_policy.h"
#include "fusefs/views.h"

struct fuse_session;

namespace lazyram::fusefs {

class Filesystem {
 public:
  struct Options {
    std::string mountpoint;  // must exist and be a directory
    bool allow_other = false;
    int max_threads = 32;
    // Mount read-only (-o ro): the kernel refuses every write with EROFS,
    // and so do the handlers.
    bool read_only = false;
    // Push pulled pages into the page cache (fusefs/page_pusher.h).
    bool push = true;
    // Open complete regions in FUSE passthrough mode (memory stores only;
    // fusefs/passthrough_policy.h).
    bool passthrough = true;
  };

  // What the filesystem serves; each must outlive the Filesystem.
  struct Parts {
    RegionSet* regions = nullptr;          // not null
    const ForensicViews* views = nullptr;  // null: no views/ folder
    StatusSections* status = nullptr;      // not null: push and passthrough report here
  };

  static absl::StatusOr<std::unique_ptr<Filesystem>> Mount(Parts parts, Options options);
  Filesystem(const Filesystem&) = delete;
  Filesystem& operator=(const Filesystem&) = delete;
  // Unmounts if still mounted and frees the session.
  ~Filesystem();

  // Serves requests until the filesystem is unmounted.
  absl::Status Run();

  // Unmounts: the kernel writes dirty pages back first. Busy (a file still
  // open or mapped) is kFailedPrecondition unless `lazy`, which detaches
  // the mount and lets Run serve until its last user is gone.
  absl::Status Unmount(bool lazy);

  const std::string& mountpoint() const { return options_.mountpoint; }

  // Lookup counting (the kernel's nlookup) of region `index`: each
  // fuse_reply_entry/fuse_reply_create adds one, FORGET subtracts. When an
  // unlinked region's count reaches 0 its store is released.
  void AddLookup(size_t index);
  void Forget(size_t index, uint64_t count);
  // After an unlink (or a rename that replaced it): releases the region at
  // once if the kernel holds no reference.
  void ReleaseIfForgotten(size_t index);

  // Called by the request handlers (fusefs/filesystem_ops.cc).
  RegionSet* regions() const { return parts_.regions; }
  struct stat RegionAttr(size_t index) const;
  struct stat RootAttr() const;
  // The views/ folder; null when the mount has none.
  ViewsDir* views() const { return views_.get(); }
  // Null when pushing is off.
  PagePusher* pusher() const { return pusher_.get(); }
  PassthroughPolicy* passthrough() const { return passthrough_.get(); }
  // Null when passthrough is off.
  PassthroughChannel* channel() const { return channel_.get(); }

 private:
  Filesystem(Parts parts, Options options);
  // Puts a PassthroughChannel between libfuse and /dev/fuse.
  absl::Status InstallChannel();

  const Parts parts_;
  const Options options_;
  const timespec mount_time_;  // every file's mtime: a changed mtime drops caches
  std::unique_ptr<ViewsDir> views_;
  // The channel sees every request and reply of session_ once installed;
  // the policy uses it. Both go after session_ (the destructor frees the
  // session explicitly).
  std::unique_ptr<PassthroughChannel> channel_;
  std::unique_ptr<PassthroughPolicy> passthrough_;
  fuse_session* session_ = nullptr;
  std::unique_ptr<PagePusher> pusher_;  // before session_ goes
  absl::Mutex lookups_mu_;              // a leaf
  absl::flat_hash_map<size_t, uint64_t> lookups_ ABSL_GUARDED_BY(lookups_mu_);
};

}  // namespace lazyram::fusefs

#endif  // LAZYRAM_FUSEFS_FILESYSTEM_H_
