#include "fusefs/filesystem_ops.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <stdio.h>  // RENAME_NOREPLACE
#include <sys/statvfs.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "daemon/base/log.h"
#include "daemon/base/thread_priority.h"
#include "fusefs/filesystem.h"
#include "fusefs/status_errno.h"

namespace lazyram::fusefs {
namespace {

// Regions never change behind the kernel's back: cache names and attributes
// for as long as the kernel likes. A short-lived cache would make it drop
// the consumer's pages whenever it re-validated.
constexpr double kCacheTimeout = 86400.0 * 365;

Filesystem* Fs(fuse_req_t req) { return static_cast<Filesystem*>(fuse_req_userdata(req)); }

// A region file's handle: the region index, and this bit when the file is
// open in FUSE passthrough mode (for RELEASE to count it off). READs may
// still arrive on such a handle (readahead(2) fills the page cache).
constexpr uint64_t kPassthroughHandle = uint64_t{1} << 62;
size_t RegionOf(const fuse_file_info* fi) { return fi->fh & ~kPassthroughHandle; }

// Region index of an inode, or -1 for the root or an unknown inode.
ssize_t IndexOf(Filesystem* fs, fuse_ino_t ino) {
  if (ino < 2) return -1;
  const size_t index = ino - 2;
  return fs->regions()->region(index) == nullptr ? -1 : static_cast<ssize_t>(index);
}

void ReplyStatus(fuse_req_t req, const absl::Status& status) {
  fuse_reply_err(req, StatusToErrno(status));
}

fuse_entry_param EntryFor(Filesystem* fs, size_t index) {
  fuse_entry_param e{};
  e.ino = index + 2;
  e.generation = 1;
  e.attr = fs->RegionAttr(index);
  e.attr_timeout = kCacheTimeout;
  e.entry_timeout = kCacheTimeout;
  return e;
}

// Picks the open mode of region `index`, fills `fi` for it and, for
// passthrough, marks the reply this thread sends next. Returns whether the
// open is passthrough, for AfterReply.
bool PrepareOpen(Filesystem* fs, size_t index, fuse_file_info* fi) {
  const PassthroughPolicy::Grant grant = fs->passthrough()->Open(index);
  fi->fh = index | (grant.passthrough ? kPassthroughHandle : 0);
  // Cached mode: shared writable mmap needs it, and pages stay cached
  // across opens. Never direct_io (docs/kernel-facts.md#fuse). Passthrough
  // wants neither flag; the channel clears them in the reply anyway.
  fi->keep_cache = grant.passthrough ? 0 : 1;
  fi->direct_io = 0;
  if (grant.passthrough) fs->channel()->MarkOpenReply(grant.backing_id);
  return grant.passthrough;
}

// After the reply of an open PrepareOpen marked: if it could not be
// patched, the kernel got a cached open, and passthrough stops here.
void AfterReply(Filesystem* fs, size_t index, bool passthrough) {
  if (passthrough && !fs->channel()->TakeMarkApplied()) fs->passthrough()->GrantFailed(index);
}

void Init(void* /*userdata*/, fuse_conn_info* conn) {
  // A changed size or mtime must not drop the consumer's pages.
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
  // READ replies come from the store's descriptor: splice them (memfd ->
  // pipe moves page references, pipe -> /dev/fuse copies once) instead of
  // reading into a buffer and writing that (two copies).
  if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want |= FUSE_CAP_SPLICE_WRITE;
  // Requests must be read with read(2), through the PassthroughChannel
  // (libfuse splices them past it otherwise). Nothing here uses it anyway:
  // there is no write_buf handler.
  conn->want &= ~FUSE_CAP_SPLICE_READ;
  // QEMU's huge-page faults arrive as many parallel READs.
  conn->max_background = 64;
  conn->congestion_threshold = 48;
}

void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Filesystem* fs = Fs(req);
  if (parent == kViewsDirIno && fs->views() != nullptr) return fs->views()->Lookup(req, name);
  if (parent != FUSE_ROOT_ID) return (void)fuse_reply_err(req, ENOENT);
  if (fs->views() != nullptr && std::strcmp(name, kViewsDirName) == 0) {
    return fs->views()->LookupInRoot(req);
  }
  std::optional<size_t> index = fs->regions()->FindRegion(name);
  if (!index.has_value()) return (void)fuse_reply_err(req, ENOENT);
  fuse_entry_param e = EntryFor(fs, *index);
  fs->AddLookup(*index);  // before the reply: a FORGET may follow it at once
  fuse_reply_entry(req, &e);
}

void ForgetOne(Filesystem* fs, fuse_ino_t ino, uint64_t nlookup) {
  if (ino < 2 || ViewsDir::Owns(ino)) return;
  fs->Forget(ino - 2, nlookup);
}

void Forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  ForgetOne(Fs(req), ino, nlookup);
  fuse_reply_none(req);
}

void ForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  for (size_t i = 0; i < count; ++i) ForgetOne(Fs(req), forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

void GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* /*fi*/) {
  Filesystem* fs = Fs(req);
  if (ino == FUSE_ROOT_ID) {
    struct stat st = fs->RootAttr();
    return (void)fuse_reply_attr(req, &st, kCacheTimeout);
  }
  if (ViewsDir::Owns(ino) && fs->views() != nullptr) return fs->views()->GetAttr(req, ino);
  ssize_t index = IndexOf(fs, ino);
  if (index < 0) return (void)fuse_reply_err(req, ENOENT);
  // After a passthrough write past the end the kernel asks again (it
  // invalidates the size): Region::size() answers with the grown one.
  struct stat st = fs->RegionAttr(static_cast<size_t>(index));
  fuse_reply_attr(req, &st, kCacheTimeout);
}

void SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
             fuse_file_info* /*fi*/) {
  Filesystem* fs = Fs(req);
  if (fs->regions()->read_only() || ViewsDir::Owns(ino)) return (void)fuse_reply_err(req, EROFS);
  ssize_t index = IndexOf(fs, ino);
  if (index < 0) return (void)fuse_reply_err(req, ino == FUSE_ROOT_ID ? EPERM : ENOENT);
  if (to_set & FUSE_SET_ATTR_SIZE) {
    absl::Status s = fs->regions()
                         ->region(static_cast<size_t>(index))
                         ->Resize(static_cast<uint64_t>(attr->st_size));
    if (!s.ok()) return ReplyStatus(req, s);
  }
  // Mode, owner and times are fixed: a changed mtime would invalidate the
  // consumer's cached pages. Such requests succeed without effect.
  struct stat st = fs->RegionAttr(static_cast<size_t>(index));
  fuse_reply_attr(req, &st, kCacheTimeout);
}

void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Filesystem* fs = Fs(req);
  if (ino == FUSE_ROOT_ID) return (void)fuse_reply_err(req, EISDIR);
  if (ViewsDir::Owns(ino) && fs->views() != nullptr) return fs->views()->Open(req, ino, fi);
  ssize_t index = IndexOf(fs, ino);
  if (index < 0) return (void)fuse_reply_err(req, ENOENT);
  if (fs->regions()->read_only() &&
      ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))) {
    return (void)fuse_reply_err(req, EROFS);
  }
  if (fi->flags & O_TRUNC) {
    // With atomic O_TRUNC (libfuse's default) the kernel leaves the
    // truncation to OPEN and takes the size as 0 once it succeeds.
    absl::Status s = fs->regions()->region(static_cast<size_t>(index))->Resize(0);
    if (!s.ok()) return ReplyStatus(req, s);
  }
  const bool passthrough = PrepareOpen(fs, static_cast<size_t>(index), fi);
  fuse_reply_open(req, fi);
  AfterReply(fs, static_cast<size_t>(index), passthrough);
}

void Create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t /*mode*/,
            fuse_file_info* fi) {
  Filesystem* fs = Fs(req);
  if (fs->regions()->read_only() || parent == kViewsDirIno) return (void)fuse_reply_err(req, EROFS);
  if (parent != FUSE_ROOT_ID) return (void)fuse_reply_err(req, ENOENT);
  absl::StatusOr<size_t> index = fs->regions()->CreateRegion(name);
  if (!index.ok()) return ReplyStatus(req, index.status());
  fuse_entry_param e = EntryFor(fs, *index);
  const bool passthrough = PrepareOpen(fs, *index, fi);
  fs->AddLookup(*index);
  fuse_reply_create(req, &e, fi);
  AfterReply(fs, *index, passthrough);
}

// For stores without a descriptor libfuse can read from (O_DIRECT needs
// aligned buffers): read into this thread's aligned buffer and reply from it.
void ReplyFromBuffer(fuse_req_t req, Region* region, uint64_t offset, size_t length) {
  constexpr size_t kAlign = 4096, kMax = 4 << 20;
  struct Deleter {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<uint8_t, Deleter> buffer(
      static_cast<uint8_t*>(std::aligned_alloc(kAlign, kMax)));
  std::vector<uint8_t> big;
  uint8_t* data = buffer.get();
  if (length > kMax) {
    big.resize(length);
    data = big.data();
  }
  absl::Status s = region->store().Read(offset, std::span(data, length));
  if (!s.ok()) {
    LogError("read of %s at %u+%u failed: %s", region->name(), offset, length, s.message());
    return ReplyStatus(req, s);
  }
  fuse_reply_buf(req, reinterpret_cast<const char*>(data), length);
}

// libfuse starts workers as it needs them; each becomes latency sensitive
// (a short scheduler slice) the first time it serves a READ or WRITE: a
// faulting guest waits on it.
void TuneWorker() {
  thread_local const bool tuned = [] {
    if (absl::Status s = MakeThreadLatencySensitive(); !s.ok()) {
      LogWarning("FUSE worker keeps the default priority: %s", s.message());
    }
    return true;
  }();
  (void)tuned;
}

// A READ the page pusher's helper started (the push, not a consumer):
// served at background priority, so that the worker copying it gives way
// to the threads a fault is waiting on.
bool IsPushRead(fuse_req_t req) {
  const PagePusher* pusher = Fs(req)->pusher();
  return pusher != nullptr && pusher->helper_pid() != 0 &&
         fuse_req_ctx(req)->pid == pusher->helper_pid();
}

void Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  if (ViewsDir::Owns(ino)) return Fs(req)->views()->Read(req, size, off, fi);
  Region* region = Fs(req)->regions()->region(RegionOf(fi));
  const uint64_t region_size = region->size();
  const uint64_t offset = static_cast<uint64_t>(off);
  if (offset >= region_size || size == 0) return (void)fuse_reply_buf(req, nullptr, 0);
  TuneWorker();
  const size_t length = static_cast<size_t>(std::min<uint64_t>(size, region_size - offset));
  const ScopedBackground background(IsPushRead(req));
  // Answered from whichever thread makes the pages local; this worker
  // returns at once.
  region->EnsureLocal(
      offset, length, protocol::Priority::kDemand, [req, region, offset, length](absl::Status s) {
        if (!s.ok()) {
          LogError("read of %s at %u+%u failed: %s", region->name(), offset, length, s.message());
          return ReplyStatus(req, s);
        }
        if (region->store().fd() < 0) return ReplyFromBuffer(req, region, offset, length);
        // The store holds every byte of the range now; the
        // reply is read straight from its descriptor.
        fuse_bufvec buf = FUSE_BUFVEC_INIT(length);
        buf.buf[0].flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
        buf.buf[0].fd = region->store().fd();
        buf.buf[0].pos = static_cast<off_t>(offset);
        fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_NONBLOCK);
      });
}

void Write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off,
           fuse_file_info* fi) {
  if (Fs(req)->regions()->read_only() || ViewsDir::Owns(ino)) {
    return (void)fuse_reply_err(req, EROFS);
  }
  TuneWorker();
  Region* region = Fs(req)->regions()->region(RegionOf(fi));
  region->Write(static_cast<uint64_t>(off), std::span(reinterpret_cast<const uint8_t*>(buf), size),
                [req, size](absl::Status s) {
                  if (!s.ok()) return ReplyStatus(req, s);
                  fuse_reply_write(req, size);
                });
}

void Fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
               fuse_file_info* fi) {
  if (Fs(req)->regions()->read_only() || ViewsDir::Owns(ino)) {
    return (void)fuse_reply_err(req, EROFS);
  }
  Region* region = Fs(req)->regions()->region(RegionOf(fi));
  const auto off = static_cast<uint64_t>(offset), len = static_cast<uint64_t>(length);
  if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
    return region->Punch(off, len, [req](absl::Status s) { ReplyStatus(req, s); });
  }
  if (mode == FALLOC_FL_ZERO_RANGE || mode == (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)) {
    // Every page is backed already: zeroing a range is punching it, after
    // growing a sourceless file when the range reaches past its end (the
    // grown part reads zero). With KEEP_SIZE the range is cut at the end.
    if (!(mode & FALLOC_FL_KEEP_SIZE) && off + len > region->size()) {
      if (absl::Status s = region->Resize(off + len); !s.ok()) return ReplyStatus(req, s);
    }
    return region->Punch(off, len, [req](absl::Status s) { ReplyStatus(req, s); });
  }
  if (mode == 0 || mode == FALLOC_FL_KEEP_SIZE) {
    // Every page is backed already; allocating only grows a sourceless file.
    if (mode == 0 && off + len > region->size()) return ReplyStatus(req, region->Resize(off + len));
    return (void)fuse_reply_err(req, 0);
  }
  // COLLAPSE_RANGE, INSERT_RANGE, UNSHARE_RANGE, PUNCH_HOLE without KEEP_SIZE
  // (which Linux refuses itself): not for RAM files.
  fuse_reply_err(req, EOPNOTSUPP);
}

void Flush(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }
void Release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (ViewsDir::Owns(ino)) return Fs(req)->views()->Release(req, fi);
  Fs(req)->passthrough()->Release(RegionOf(fi), (fi->fh & kPassthroughHandle) != 0);
  fuse_reply_err(req, 0);
}
void Fsync(fuse_req_t req, fuse_ino_t, int, fuse_file_info*) { fuse_reply_err(req, 0); }

void OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (ino == kViewsDirIno && Fs(req)->views() != nullptr) return Fs(req)->views()->OpenDir(req, fi);
  if (ino != FUSE_ROOT_ID) return (void)fuse_reply_err(req, ENOTDIR);
  fuse_reply_open(req, fi);
}

void ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* /*fi*/) {
  Filesystem* fs = Fs(req);
  if (ino == kViewsDirIno && fs->views() != nullptr) return fs->views()->ReadDir(req, size, off);
  if (ino != FUSE_ROOT_ID) return (void)fuse_reply_err(req, ENOTDIR);
  std::string buf(size, '\0');
  size_t used = 0;
  // Entry k (0 ".", 1 "..", then "views" on a forensic mount, then
  // regions) carries offset k+1: the offset a next call resumes from.
  const size_t first_region = fs->views() != nullptr ? 3 : 2;
  const size_t total = first_region + fs->regions()->region_count();
  for (size_t k = static_cast<size_t>(off); k < total; ++k) {
    struct stat st {};
    std::string name;
    if (k < 2) {
      st.st_ino = FUSE_ROOT_ID;
      st.st_mode = S_IFDIR;
      name = k == 0 ? "." : "..";
    } else if (k < first_region) {
      st.st_ino = kViewsDirIno;
      st.st_mode = S_IFDIR;
      name = kViewsDirName;
    } else {
      Region* region = fs->regions()->region(k - first_region);
      if (region == nullptr || region->unlinked()) continue;  // slots stay; names go
      st.st_ino = k - first_region + 2;                       // region i has inode i + 2
      st.st_mode = S_IFREG;
      name = region->name();
    }
    size_t need = fuse_add_direntry(req, buf.data() + used, size - used, name.c_str(), &st,
                                    static_cast<off_t>(k + 1));
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void StatFs(fuse_req_t req, fuse_ino_t) {
  Filesystem* fs = Fs(req);
  struct statvfs sv {};
  sv.f_bsize = sv.f_frsize = 4096;
  for (size_t i = 0; i < fs->regions()->region_count(); ++i) {
    Region* region = fs->regions()->region(i);
    if (region->unlinked()) continue;
    sv.f_blocks += (region->size() + 4095) / 4096;
    ++sv.f_files;
  }
  sv.f_namemax = 255;
  fuse_reply_statfs(req, &sv);
}

// SEEK_DATA / SEEK_HOLE. A region is all data; a view knows its holes.
void Lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, fuse_file_info* fi) {
  if (ViewsDir::Owns(ino)) return Fs(req)->views()->Lseek(req, off, whence, fi);
  Region* region = Fs(req)->regions()->region(RegionOf(fi));
  const uint64_t size = region->size();
  if (off < 0 || (whence != SEEK_DATA && whence != SEEK_HOLE)) {
    return (void)fuse_reply_err(req, EINVAL);
  }
  if (static_cast<uint64_t>(off) >= size) return (void)fuse_reply_err(req, ENXIO);
  fuse_reply_lseek(req, whence == SEEK_DATA ? off : static_cast<off_t>(size));
}

// Other namespace changes (folders, links, device files): not supported;
// EROFS on a read-only mount.
void NoNamespaceChange(fuse_req_t req) {
  fuse_reply_err(req, Fs(req)->regions()->read_only() ? EROFS : ENOSYS);
}
void Mknod(fuse_req_t req, fuse_ino_t, const char*, mode_t, dev_t) { NoNamespaceChange(req); }
void Mkdir(fuse_req_t req, fuse_ino_t, const char*, mode_t) { NoNamespaceChange(req); }
void Rmdir(fuse_req_t req, fuse_ino_t, const char*) { NoNamespaceChange(req); }
void Symlink(fuse_req_t req, const char*, fuse_ino_t, const char*) { NoNamespaceChange(req); }
void Link(fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) { NoNamespaceChange(req); }

// Unlink: the name goes at once; the region's store is freed once the
// kernel forgets its inode (last close, last munmap; Filesystem::Forget).
void Unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Filesystem* fs = Fs(req);
  if (fs->regions()->read_only() || parent == kViewsDirIno) return (void)fuse_reply_err(req, EROFS);
  if (parent != FUSE_ROOT_ID) return (void)fuse_reply_err(req, ENOENT);
  if (fs->views() != nullptr && std::strcmp(name, kViewsDirName) == 0) {
    return (void)fuse_reply_err(req, EISDIR);
  }
  absl::StatusOr<size_t> index = fs->regions()->UnlinkRegion(name);
  if (!index.ok()) return ReplyStatus(req, index.status());
  fuse_reply_err(req, 0);
  fs->ReleaseIfForgotten(*index);
}

// Rename within the root. RENAME_NOREPLACE is honoured; RENAME_EXCHANGE
// and whiteouts are not supported (EINVAL).
void Rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
            const char* newname, unsigned int flags) {
  Filesystem* fs = Fs(req);
  if (fs->regions()->read_only() || parent == kViewsDirIno || newparent == kViewsDirIno) {
    return (void)fuse_reply_err(req, EROFS);
  }
  if (parent != FUSE_ROOT_ID || newparent != FUSE_ROOT_ID) {
    return (void)fuse_reply_err(req, ENOENT);
  }
  if ((flags & ~static_cast<unsigned>(RENAME_NOREPLACE)) != 0) {
    return (void)fuse_reply_err(req, EINVAL);
  }
  if (fs->views() != nullptr &&
      (std::strcmp(name, kViewsDirName) == 0 || std::strcmp(newname, kViewsDirName) == 0)) {
    return (void)fuse_reply_err(req, EBUSY);
  }
  absl::StatusOr<std::optional<size_t>> replaced =
      fs->regions()->RenameRegion(name, newname, (flags & RENAME_NOREPLACE) != 0);
  if (!replaced.ok()) return ReplyStatus(req, replaced.status());
  fuse_reply_err(req, 0);
  if (replaced->has_value()) fs->ReleaseIfForgotten(**replaced);
}

fuse_lowlevel_ops MakeOps() {
  fuse_lowlevel_ops ops{};
  ops.init = Init;
  ops.lookup = Lookup;
  ops.forget = Forget;
  ops.forget_multi = ForgetMulti;
  ops.getattr = GetAttr;
  ops.setattr = SetAttr;
  ops.open = Open;
  ops.create = Create;
  ops.read = Read;
  ops.write = Write;
  ops.fallocate = Fallocate;
  ops.flush = Flush;
  ops.release = Release;
  ops.fsync = Fsync;
  ops.opendir = OpenDir;
  ops.readdir = ReadDir;
  ops.statfs = StatFs;
  ops.lseek = Lseek;
  ops.mknod = Mknod;
  ops.mkdir = Mkdir;
  ops.unlink = Unlink;
  ops.rmdir = Rmdir;
  ops.symlink = Symlink;
  ops.link = Link;
  ops.rename = Rename;
  return ops;
}

}  // namespace

const fuse_lowlevel_ops& FilesystemOps() {
  static const fuse_lowlevel_ops ops = MakeOps();
  return ops;
}

}  // namespace lazyram::fusefs
