#include "fusefs/views.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <string>

#include "daemon/base/log.h"
#include "fusefs/status_errno.h"

namespace lazyram::fusefs {
namespace {

using Kind = ForensicViews::Kind;
using ViewPtr = std::shared_ptr<const MemoryView>;

constexpr fuse_ino_t kManifestIno = kViewsDirIno + 1 + static_cast<int>(Kind::kManifest);

// A view's size follows the main RAM region (which may still be growing on
// a mount without a source): re-check it now and then, not never.
constexpr double kViewTimeout = 1.0;

Kind KindOf(fuse_ino_t ino) { return static_cast<Kind>(ino - kViewsDirIno - 1); }

ViewPtr* Handle(fuse_file_info* fi) { return reinterpret_cast<ViewPtr*>(fi->fh); }

}  // namespace

ViewsDir::ViewsDir(const ForensicViews* views, bool read_only, timespec mtime, uid_t uid, gid_t gid)
    : views_(views), read_only_(read_only), mtime_(mtime), uid_(uid), gid_(gid) {}

double ViewsDir::Timeout(fuse_ino_t ino) { return ino == kManifestIno ? 0.0 : kViewTimeout; }

std::optional<struct stat> ViewsDir::Attr(fuse_ino_t ino) const {
  struct stat st {};
  st.st_ino = ino;
  st.st_uid = uid_;
  st.st_gid = gid_;
  st.st_atim = st.st_mtim = st.st_ctim = mtime_;
  if (ino == kViewsDirIno) {
    st.st_mode = S_IFDIR | 0555;
    st.st_nlink = 2;
    return st;
  }
  ViewPtr view = views_->View(KindOf(ino));
  if (view == nullptr) return std::nullopt;
  st.st_mode = S_IFREG | 0444;
  st.st_nlink = 1;
  st.st_size = static_cast<off_t>(view->size());
  st.st_blksize = 4096;
  st.st_blocks = static_cast<blkcnt_t>((view->size() + 511) / 512);
  return st;
}

void ViewsDir::LookupInRoot(fuse_req_t req) {
  fuse_entry_param e{};
  e.ino = kViewsDirIno;
  e.generation = 1;
  e.attr = *Attr(kViewsDirIno);
  e.attr_timeout = e.entry_timeout = kViewTimeout;
  fuse_reply_entry(req, &e);
}

void ViewsDir::Lookup(fuse_req_t req, const char* name) {
  for (int k = 0; k < ForensicViews::kNumKinds; ++k) {
    if (ForensicViews::kNames[k] != name) continue;
    const fuse_ino_t ino = kViewsDirIno + 1 + k;
    std::optional<struct stat> st = Attr(ino);
    if (!st.has_value()) break;
    fuse_entry_param e{};
    e.ino = ino;
    e.generation = 1;
    e.attr = *st;
    e.attr_timeout = e.entry_timeout = Timeout(ino);
    return (void)fuse_reply_entry(req, &e);
  }
  fuse_reply_err(req, ENOENT);
}

void ViewsDir::GetAttr(fuse_req_t req, fuse_ino_t ino) {
  std::optional<struct stat> st = Attr(ino);
  if (!st.has_value()) return (void)fuse_reply_err(req, ENOENT);
  fuse_reply_attr(req, &*st, Timeout(ino));
}

void ViewsDir::Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (ino == kViewsDirIno) return (void)fuse_reply_err(req, EISDIR);
  if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
    return (void)fuse_reply_err(req, EROFS);
  }
  ViewPtr view = views_->View(KindOf(ino));
  if (view == nullptr) return (void)fuse_reply_err(req, ENOENT);
  fi->fh = reinterpret_cast<uint64_t>(new ViewPtr(std::move(view)));
  if (ino == kManifestIno) {
    fi->direct_io = 1;
  } else {
    fi->keep_cache = read_only_ ? 1 : 0;
  }
  if (fuse_reply_open(req, fi) != 0) delete Handle(fi);  // the open was interrupted
}

void ViewsDir::Read(fuse_req_t req, size_t size, off_t off, fuse_file_info* fi) {
  const ViewPtr& view = *Handle(fi);
  view->Read(static_cast<uint64_t>(off), size,
             [req, off, size](absl::StatusOr<std::vector<uint8_t>> bytes) {
               if (!bytes.ok()) {
                 LogError("read of a view at %d+%d failed: %s", off, size,
                          bytes.status().message());
                 return (void)fuse_reply_err(req, StatusToErrno(bytes.status()));
               }
               fuse_reply_buf(req, reinterpret_cast<const char*>(bytes->data()), bytes->size());
             });
}

void ViewsDir::Lseek(fuse_req_t req, off_t off, int whence, fuse_file_info* fi) {
  const ViewPtr& view = *Handle(fi);
  const uint64_t at = static_cast<uint64_t>(off);
  if (off < 0) return (void)fuse_reply_err(req, EINVAL);
  if (whence != SEEK_DATA && whence != SEEK_HOLE) return (void)fuse_reply_err(req, EINVAL);
  if (at >= view->size()) return (void)fuse_reply_err(req, ENXIO);
  if (whence == SEEK_HOLE)
    return (void)fuse_reply_lseek(req, static_cast<off_t>(view->SeekHole(at)));
  std::optional<uint64_t> data = view->SeekData(at);
  if (!data.has_value()) return (void)fuse_reply_err(req, ENXIO);
  fuse_reply_lseek(req, static_cast<off_t>(*data));
}

void ViewsDir::Release(fuse_req_t req, fuse_file_info* fi) {
  delete Handle(fi);
  fuse_reply_err(req, 0);
}

void ViewsDir::OpenDir(fuse_req_t req, fuse_file_info* fi) { fuse_reply_open(req, fi); }

void ViewsDir::ReadDir(fuse_req_t req, size_t size, off_t off) {
  // Entry k: 0 ".", 1 "..", then the views that exist now; offset k+1
  // resumes after entry k.
  std::vector<std::pair<std::string, fuse_ino_t>> entries = {{".", kViewsDirIno},
                                                             {"..", FUSE_ROOT_ID}};
  for (int k = 0; k < ForensicViews::kNumKinds; ++k) {
    if (views_->View(static_cast<Kind>(k)) != nullptr) {
      entries.emplace_back(std::string(ForensicViews::kNames[k]), kViewsDirIno + 1 + k);
    }
  }
  std::string buf(size, '\0');
  size_t used = 0;
  for (size_t k = static_cast<size_t>(off); k < entries.size(); ++k) {
    struct stat st {};
    st.st_ino = entries[k].second;
    st.st_mode = k < 2 ? S_IFDIR : S_IFREG;
    const size_t need = fuse_add_direntry(req, buf.data() + used, size - used,
                                          entries[k].first.c_str(), &st, static_cast<off_t>(k + 1));
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
}

}  // namespace lazyram::fusefs
