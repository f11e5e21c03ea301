// ViewsDir: the views/ folder of a forensic mount (daemon/forensics/forensic_views.h
// builds what it shows). Its inodes live far above the regions' (region
// index + 2): kViewsDirIno for the folder, kViewsDirIno + 1 + kind for
// each view. Everything in it is read-only.
//
// An open view holds a snapshot of the view (a shared_ptr in fi->fh), so a
// rebuilt view never changes under a reader. Reads are answered from the
// thread that makes the bytes local (never short; EIO on a source error).
// Memory views use the page cache when the mount is read-only (their bytes
// never change); manifest.json bypasses it (direct_io), since it grows once
// a region is hashed.
//
// Threading: the handlers run on libfuse workers and never block.
#ifndef LAZYRAM_FUSEFS_VIEWS_H_
#define LAZYRAM_FUSEFS_VIEWS_H_

#include <fuse_lowlevel.h>
#include <sys/stat.h>

#include <optional>

#include "daemon/forensics/forensic_views.h"

namespace lazyram::fusefs {

inline constexpr fuse_ino_t kViewsDirIno = fuse_ino_t{1} << 48;
inline constexpr char kViewsDirName[] = "views";

class ViewsDir {
 public:
  ViewsDir(const ForensicViews* views, bool read_only, timespec mtime, uid_t uid, gid_t gid);
  ViewsDir(const ViewsDir&) = delete;
  ViewsDir& operator=(const ViewsDir&) = delete;

  static bool Owns(fuse_ino_t ino) {
    return ino >= kViewsDirIno && ino <= kViewsDirIno + ForensicViews::kNumKinds;
  }

  // Each handler answers the request.
  void LookupInRoot(fuse_req_t req);              // the root's "views" entry
  void Lookup(fuse_req_t req, const char* name);  // parent == kViewsDirIno
  void GetAttr(fuse_req_t req, fuse_ino_t ino);
  void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void Read(fuse_req_t req, size_t size, off_t off, fuse_file_info* fi);
  void Lseek(fuse_req_t req, off_t off, int whence, fuse_file_info* fi);
  void Release(fuse_req_t req, fuse_file_info* fi);
  void OpenDir(fuse_req_t req, fuse_file_info* fi);
  void ReadDir(fuse_req_t req, size_t size, off_t off);

 private:
  // The attributes of `ino`, or nullopt if it does not exist now.
  std::optional<struct stat> Attr(fuse_ino_t ino) const;
  static double Timeout(fuse_ino_t ino);

  const ForensicViews* const views_;
  const bool read_only_;
  const timespec mtime_;
  const uid_t uid_;
  const gid_t gid_;
};

}  // namespace lazyram::fusefs

#endif  // LAZYRAM_FUSEFS_VIEWS_H_
