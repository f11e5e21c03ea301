#include "daemon/store/store_dir.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "daemon/core/state_file.h"
#include "daemon/store/direct_file_store.h"

namespace lazyram {
namespace {

constexpr char kFix[] = "use another --store directory, or empty this one to start over";

uint64_t PagesFor(uint64_t bytes) {
  return (bytes + protocol::kPageSize - 1) / protocol::kPageSize;
}

// Why a store's state file (`have`) cannot serve this mount (`want`), or OK.
absl::Status CheckSameSource(const StateFile::Identity& have, const StateFile::Identity& want,
                             absl::string_view dir) {
  if (have.has_source != want.has_source) {
    return absl::FailedPreconditionError(
        have.has_source
            ? absl::StrCat("store directory ", dir, " was filled from a page source (region '",
                           have.name, "'); mount it with that source, or ", kFix)
            : absl::StrCat("store directory ", dir,
                           " holds the files of a mount without a source (region '", have.name,
                           "'); mount it without --source, or ", kFix));
  }
  if (!have.has_source && have.source_id != want.source_id) {
    // A file created in a mount: of one with a source (source_id set) or
    // of one without (0).
    return absl::FailedPreconditionError(
        have.source_id != 0
            ? absl::StrCat("store directory ", dir, " holds region '", have.name,
                           "', created in a mount of another page source; mount it with that "
                           "source, or ",
                           kFix)
            : absl::StrCat("store directory ", dir,
                           " holds the files of a mount without a source (region '", have.name,
                           "'); mount it without --source, or ", kFix));
  }
  if (!have.has_source) return absl::OkStatus();  // its size is its own
  if (have.size != want.size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "store directory ", dir, " belongs to another source: region '", have.name, "' is ",
        have.size, " bytes there and ", want.size, " bytes in this source; ", kFix));
  }
  if (have.source_id != want.source_id || have.index != want.index ||
      have.capacity_pages != want.capacity_pages) {
    return absl::FailedPreconditionError(absl::StrCat(
        "store directory ", dir, " belongs to another source: its region table (names, sizes, ",
        "zero ranges) differs from this source's; ", kFix));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<StoreDir>> StoreDir::Open(std::string dir) {
  absl::StatusOr<UniqueFd> lock = StateFile::LockStore(dir);
  if (!lock.ok()) return lock.status();
  return std::unique_ptr<StoreDir>(new StoreDir(std::move(dir), *std::move(lock)));
}

absl::StatusOr<std::vector<std::string>> StoreDir::StateNames() const {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry :
       std::filesystem::directory_iterator(absl::StrCat(dir_, "/", StateFile::kDirName), ec)) {
    const std::string file = entry.path().filename();
    if (absl::EndsWith(file, ".state")) names.push_back(file.substr(0, file.size() - 6));
  }
  if (ec) return absl::InternalError(absl::StrCat("listing ", dir_, ": ", ec.message()));
  return names;
}

absl::Status StoreDir::CheckSource(const std::vector<protocol::RegionInfo>& table) {
  source_id_ = SourceId(table);
  absl::StatusOr<std::vector<std::string>> names = StateNames();
  if (!names.ok()) return names.status();
  for (const std::string& name : *names) {
    if (std::any_of(table.begin(), table.end(),
                    [&](const protocol::RegionInfo& r) { return r.name == name; })) {
      continue;
    }
    // A region created in a mount of this source is restored by
    // LocalRegions; say so when the store is a mount's without a source.
    absl::StatusOr<std::unique_ptr<StateFile>> state = StateFile::Open(dir_, name);
    if (state.ok() && !(*state)->identity().has_source) {
      if ((*state)->identity().source_id == source_id_) continue;
      StateFile::Identity want = (*state)->identity();
      want.source_id = source_id_;
      return CheckSameSource((*state)->identity(), want, dir_);
    }
    return absl::FailedPreconditionError(
        absl::StrCat("store directory ", dir_, " holds region '", name,
                     "', which this source does not have: it belongs to another source; ", kFix));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Region::Options>> StoreDir::SourcelessRegions(uint64_t max_size) {
  source_id_ = 0;  // a mount without a source
  return LocalRegions(max_size);
}

absl::StatusOr<std::vector<Region::Options>> StoreDir::LocalRegions(uint64_t max_size) {
  absl::StatusOr<std::vector<std::string>> names = StateNames();
  if (!names.ok()) return names.status();
  std::vector<std::unique_ptr<StateFile>> files;
  for (const std::string& name : *names) {
    absl::StatusOr<std::unique_ptr<StateFile>> state = StateFile::Open(dir_, name);
    if (!state.ok()) return state.status();
    // With a source, its own regions are CheckSource's and Attach's.
    if (source_id_ != 0 && (*state)->identity().has_source) continue;
    StateFile::Identity none = (*state)->identity();
    none.has_source = false;
    none.source_id = source_id_;
    if (absl::Status s = CheckSameSource((*state)->identity(), none, dir_); !s.ok()) return s;
    if (absl::Status s = (*state)->CheckUsable(dir_); !s.ok()) return s;
    files.push_back(*std::move(state));
  }
  std::sort(files.begin(), files.end(),
            [](const auto& a, const auto& b) { return a->identity().index < b->identity().index; });
  std::vector<Region::Options> regions;
  for (std::unique_ptr<StateFile>& file : files) {
    regions.push_back({.name = file->identity().name,
                       .index = static_cast<uint32_t>(regions.size()),
                       .size = file->identity().size,
                       .max_size = max_size,
                       .state = std::move(file)});
  }
  return regions;
}

absl::StatusOr<std::unique_ptr<Store>> StoreDir::Attach(Region::Options* ro) {
  if (ro->name == StateFile::kDirName) {
    return absl::InvalidArgumentError(absl::StrCat("a region named ", StateFile::kDirName,
                                                   " cannot be kept in a --store directory"));
  }
  if (ro->state == nullptr) {
    const bool sourced = ro->source != nullptr;
    StateFile::Identity want{
        ro->name,   ro->size, PagesFor(sourced ? ro->size : std::max(ro->max_size, ro->size)),
        sourced,
        source_id_,  // 0 without a source
        ro->index};
    absl::StatusOr<std::unique_ptr<StateFile>> state = StateFile::Open(dir_, ro->name);
    if (state.ok()) {
      if (absl::Status s = CheckSameSource((*state)->identity(), want, dir_); !s.ok()) return s;
      if (absl::Status s = (*state)->CheckUsable(dir_); !s.ok()) return s;
    } else if (absl::IsNotFound(state.status())) {
      state = StateFile::Create(dir_, want);
    }
    if (!state.ok()) return state.status();
    ro->state = *std::move(state);
  }
  const uint64_t bytes = PagesFor(ro->size) * protocol::kPageSize;
  if (!ro->state->restored()) {
    // Emptied first: no stale byte may pass for a page the new map calls
    // zero. The state file gets its name only after this (Region::Create).
    absl::StatusOr<std::unique_ptr<DirectFileStore>> store =
        DirectFileStore::Create(dir_, ro->name, bytes);
    if (!store.ok()) return store.status();
    return std::unique_ptr<Store>(*std::move(store));
  }
  if (access(absl::StrCat(dir_, "/", ro->name).c_str(), F_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("store directory ", dir_, " has page states for region '", ro->name,
                     "' but not its data file; empty the directory to start over"));
  }
  absl::StatusOr<std::unique_ptr<DirectFileStore>> store =
      DirectFileStore::Open(dir_, ro->name, bytes);
  if (!store.ok()) return store.status();
  return std::unique_ptr<Store>(*std::move(store));
}

absl::Status StoreDir::Remove(absl::string_view name) {
  // The state file first: a kill between the two steps leaves a data file
  // without page states, which nothing restores (and a new region of that
  // name replaces). The other order would leave page states without their
  // data, which makes the whole store refused.
  if (absl::Status s = StateFile::Remove(dir_, name); !s.ok()) return s;
  const std::string data = absl::StrCat(dir_, "/", name);
  if (unlink(data.c_str()) != 0 && errno != ENOENT) {
    return absl::InternalError(absl::StrCat("removing ", data, ": ", std::strerror(errno)));
  }
  return StateFile::SyncDir(dir_);
}

absl::Status StoreDir::Rename(StateFile* state, absl::string_view from, absl::string_view to) {
  // Each step leaves a store that restores either the old name or the new
  // one (docs/store.md, "Unlink and rename"): the data gets its second name
  // first (a data file without page states is ignored), then the state
  // file is renamed (the switch), then the old data name goes.
  const std::string old_data = absl::StrCat(dir_, "/", from);
  const std::string new_data = absl::StrCat(dir_, "/", to);
  if (unlink(new_data.c_str()) != 0 && errno != ENOENT) {
    return absl::InternalError(absl::StrCat("removing ", new_data, ": ", std::strerror(errno)));
  }
  if (link(old_data.c_str(), new_data.c_str()) != 0) {
    return absl::InternalError(
        absl::StrCat("linking ", old_data, " to ", new_data, ": ", std::strerror(errno)));
  }
  if (absl::Status s = StateFile::SyncDir(dir_); !s.ok()) return s;
  if (absl::Status s = state->Rename(dir_, to); !s.ok()) return s;
  if (unlink(old_data.c_str()) != 0 && errno != ENOENT) {
    return absl::InternalError(absl::StrCat("removing ", old_data, ": ", std::strerror(errno)));
  }
  return StateFile::SyncDir(dir_);
}

}  // namespace lazyram
