// StateFile: the persistent page states of one region of a --store DIR
// (docs/store.md). DIR/.lazyram-state/NAME.state is a 4 KiB header (what
// the file belongs to, the boot it was last used in, a clean flag) followed
// by the region's PageMap bytes, one per page, mapped MAP_SHARED.
//
// Crash consistency rests on ordering, not on syncs: Region marks a page
// local only after its store write completed, and a store into a shared
// file mapping, like a completed pwrite, survives the death of the process.
// A power loss is different: then only what was synced survives, in any
// order, so a file not marked clean (MarkClean: a clean shutdown or an idle
// checkpoint, see Region::Sync) that was last used by a boot that is gone
// is refused (CheckUsable).
//
// Lifetime: the PageMap from MapPages keeps its own mapping; the StateFile
// must outlive nothing else. Thread-safety: Sync, SetSize, MarkClean and
// MarkInUse may
// be called from any thread; the rest is for set-up, on one thread.
#ifndef LAZYRAM_DAEMON_CORE_STATE_FILE_H_
#define LAZYRAM_DAEMON_CORE_STATE_FILE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "daemon/base/unique_fd.h"
#include "daemon/core/page_map.h"
#include "daemon/protocol/protocol.h"

namespace lazyram {

class StateFile {
 public:
  // The folder under a store directory that holds the state files.
  static constexpr char kDirName[] = ".lazyram-state";
  static constexpr uint64_t kMapOffset = 4096;  // where the page states start

  // What a state file belongs to.
  struct Identity {
    std::string name;
    uint64_t size = 0;            // bytes
    uint64_t capacity_pages = 0;  // the map's room (grows up to it without a source)
    bool has_source = false;
    uint64_t source_id = 0;  // SourceId of the source's region table; 0 without
    uint32_t index = 0;      // the region's index in that table
  };

  // Locks `store_dir` for this process (flock on .lazyram-state/lock,
  // released when the fd closes, also on SIGKILL), creating the state folder.
  static absl::StatusOr<UniqueFd> LockStore(absl::string_view store_dir);

  // Opens the state file of region `name`; kNotFound when there is none.
  // kDataLoss when it is not a state file of this version.
  static absl::StatusOr<std::unique_ptr<StateFile>> Open(absl::string_view store_dir,
                                                         absl::string_view name);
  // Creates a fresh one, all in its (yet unset) base state, under a
  // temporary name until Commit.
  static absl::StatusOr<std::unique_ptr<StateFile>> Create(absl::string_view store_dir,
                                                           const Identity& identity);

  // The boot this machine runs (/proc/sys/kernel/random/boot_id).
  static const std::string& CurrentBootId();

  // An opened (not created) file whose page states are to be used.
  bool restored() const { return restored_; }
  const Identity& identity() const { return identity_; }
  // The page state stored as 0 (restored files only).
  PageState base() const { return base_; }
  // Whether the file was marked clean when it was opened.
  bool was_clean() const { return was_clean_; }
  const std::string& boot_id() const { return boot_id_; }

  // kFailedPrecondition, with what to do, when the file was left unclean
  // by another boot: its pages may not match the store (power loss).
  absl::Status CheckUsable(absl::string_view store_dir) const;

  // The page map in this file: `pages` pages of room `capacity_pages`
  // (the identity's), stored relative to `base`.
  absl::StatusOr<PageMap> MapPages(uint64_t pages, PageState base);
  // Counts the states of a restored map (only where the file has data).
  void Recover(PageMap* map) const;

  // Created files: records `base`, marks the file in use by this boot and
  // gives it its real name. Restored files: marks it in use by this boot,
  // durably, before anything changes.
  absl::Status Commit(PageState base);

  // Renames the file to that of region `name` (the header's name follows,
  // synced, then the state folder). The file's name is authoritative: Open
  // takes a header naming another region as an interrupted rename.
  absl::Status Rename(absl::string_view store_dir, absl::string_view name);
  // Removes the state file of region `name` (an unlink) and syncs the
  // state folder; an open StateFile of it keeps working on the unlinked
  // file.
  static absl::Status Remove(absl::string_view store_dir, absl::string_view name);
  static absl::Status SyncDir(const std::string& dir);

  // Records a new region size (regions without a source).
  absl::Status SetSize(uint64_t size);
  // Makes the page states written so far durable.
  absl::Status Sync();
  // Durably marks the file clean; the caller has synced the store and the
  // states, and nothing changed them since (see Region::Sync).
  absl::Status MarkClean();
  // Durably marks it in use again, before the first change after MarkClean.
  absl::Status MarkInUse();

 private:
  StateFile(UniqueFd fd, std::string path, Identity identity);
  absl::Status WriteHeader(bool sync) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  UniqueFd fd_;
  std::string path_;  // the file's name (the temporary one until Commit)
  std::string final_path_;
  Identity identity_;
  bool restored_ = false;
  PageState base_ = PageState::kAbsent;
  bool was_clean_ = false;
  std::string boot_id_;  // as opened
  absl::Mutex mu_;       // orders header writes
  uint64_t size_ ABSL_GUARDED_BY(mu_) = 0;
  bool clean_ ABSL_GUARDED_BY(mu_) = false;
};

// A stable 64-bit identity of a source's region table (names, sizes, zero
// extents): a store filled from one table is refused for another. Never 0.
uint64_t SourceId(const std::vector<protocol::RegionInfo>& regions);

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_CORE_STATE_FILE_H_
