#include "daemon/engine/engine.h"

#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "daemon/base/log.h"
#include "daemon/forensics/forensic_views.h"
#include "daemon/local/file_source.h"
#include "daemon/local/qemu_stream_index.h"
#include "daemon/protocol/region_name.h"
#include "daemon/store/direct_file_store.h"
#include "daemon/store/fd_store.h"
#include "daemon/store/store_dir.h"

namespace lazyram {

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(Options options) {
  if (!options.store_dir.empty()) {
    struct stat st;
    if (stat(options.store_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("store directory ", options.store_dir, " does not exist"));
    }
  }
  std::unique_ptr<Engine> engine(new Engine(std::move(options)));
  const Options& opts = engine->options_;
  if (!opts.store_dir.empty()) {
    absl::StatusOr<std::unique_ptr<StoreDir>> store_dir = StoreDir::Open(opts.store_dir);
    if (!store_dir.ok()) return store_dir.status();
    engine->store_dir_ = *std::move(store_dir);
  }
  absl::Status attached;
  if (opts.local_source.has_value()) {
    attached = engine->AttachLocalSource();
  } else if (!opts.fetch.addresses.empty()) {
    attached = engine->AttachPageServer();
  } else if (engine->store_dir_ != nullptr) {
    attached = engine->RestoreSourcelessRegions();
  }
  if (attached.ok() && engine->has_source() && engine->store_dir_ != nullptr) {
    attached = engine->RestoreLocalRegions();
  }
  if (!attached.ok()) return attached;
  if (engine->views_ == nullptr && (opts.read_only || opts.machine.has_value())) {
    const std::string source =
        opts.fetch.addresses.empty() ? "" : "tcp://" + opts.fetch.addresses[0].ToString();
    engine->views_ = std::make_unique<ForensicViews>(
        engine.get(), &engine->hasher_,
        ForensicViews::Options{opts.machine, "", source, opts.read_only});
  }
  engine->control_ = std::make_unique<MountControl>(
      MountControl::Parts{.regions = engine.get(),
                          .hasher = &engine->hasher_,
                          .fetcher = engine->fetcher_.get(),
                          .local_source = engine->local_source_ != nullptr,
                          .sections = &engine->status_sections_});
  return engine;
}

absl::Status Engine::AttachPageServer() {
  absl::StatusOr<std::unique_ptr<Fetcher>> fetcher = Fetcher::Connect(options_.fetch);
  if (!fetcher.ok()) return fetcher.status();
  fetcher_ = *std::move(fetcher);
  protocol::Welcome welcome = fetcher_->welcome();
  for (const protocol::RegionInfo& info : welcome.regions) {
    if (absl::Status s = ValidateRegionName(info.name); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("page server sent a bad region: ", s.message()));
    }
  }
  if (store_dir_ != nullptr) {
    if (absl::Status s = store_dir_->CheckSource(welcome.regions); !s.ok()) return s;
  }
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < welcome.regions.size(); ++i) {
    protocol::RegionInfo& info = welcome.regions[i];
    source_names_.push_back(info.name);
    absl::StatusOr<std::unique_ptr<Region>> region =
        BuildRegion({.name = info.name,
                     .index = static_cast<uint32_t>(i),
                     .size = info.size,
                     .source = fetcher_.get(),
                     .zero_extents = std::move(info.zero_extents),
                     .max_size = info.size});
    if (!region.ok()) return region.status();
    regions_.push_back(*std::move(region));
  }
  return absl::OkStatus();
}

absl::Status Engine::AttachLocalSource() {
  const SourceUrl& url = *options_.local_source;
  std::unique_ptr<PageLocator> locator;
  std::string qemu_machine;
  std::optional<StreamDevices> devices;
  if (url.kind == SourceUrl::Kind::kFile) {
    absl::StatusOr<std::unique_ptr<FileSource>> files = FileSource::Open(url.path);
    if (!files.ok()) return files.status();
    locator = *std::move(files);
  } else {
    const absl::Time start = absl::Now();
    absl::StatusOr<std::unique_ptr<QemuStreamIndex>> index = QemuStreamIndex::Open(url.path);
    if (!index.ok()) return index.status();
    const QemuStreamIndex::Stats& st = (*index)->stats();
    LogInfo("indexed %s in %.3f s: %d bytes read of %d, %d data and %d zero page records",
            url.ToString(), absl::ToDoubleSeconds(absl::Now() - start), st.indexed_bytes,
            st.stream_bytes, st.data_records, st.zero_records);
    qemu_machine = (*index)->machine_name();
    if ((*index)->devices().ok()) {
      devices = *(*index)->devices();
      LogInfo("device state: %d sections, %d vCPUs%s", devices->sections, devices->cpus.size(),
              devices->vmcoreinfo_paddr.has_value() ? ", a vmcoreinfo device" : "");
    } else {
      LogWarning("no CPU state from %s: %s", url.ToString(),
                 (*index)->devices().status().message());
    }
    locator = *std::move(index);
  }
  absl::StatusOr<std::unique_ptr<LocalPageSource>> source =
      LocalPageSource::Start(std::move(locator));
  if (!source.ok()) return source.status();
  local_source_ = *std::move(source);
  const std::vector<protocol::RegionInfo>& infos = local_source_->locator().regions();
  if (store_dir_ != nullptr) {
    if (absl::Status s = store_dir_->CheckSource(infos); !s.ok()) return s;
  }
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < infos.size(); ++i) {
    const protocol::RegionInfo& info = infos[i];
    source_names_.push_back(info.name);
    absl::StatusOr<std::unique_ptr<Region>> region = BuildRegion({.name = info.name,
                                                                  .index = static_cast<uint32_t>(i),
                                                                  .size = info.size,
                                                                  .source = local_source_.get(),
                                                                  .zero_extents = info.zero_extents,
                                                                  .max_size = info.size});
    if (!region.ok()) return region.status();
    regions_.push_back(*std::move(region));
  }
  ForensicViews::Options view_options{options_.machine, std::move(qemu_machine), url.ToString(),
                                      options_.read_only};
  if (devices.has_value()) {
    view_options.vmcoreinfo_paddr = devices->vmcoreinfo_paddr;
    view_options.cpus = std::move(devices->cpus);
  }
  views_ = std::make_unique<ForensicViews>(this, &hasher_, std::move(view_options));
  return absl::OkStatus();
}

Engine::~Engine() { Shutdown(); }

absl::StatusOr<std::unique_ptr<Region>> Engine::BuildRegion(Region::Options ro) {
  std::unique_ptr<Store> store;
  if (store_dir_ == nullptr) {
    // A region from a source receives whole pages; one without holds
    // exactly its bytes (Region::Resize).
    const uint64_t bytes = ro.source != nullptr ? (ro.size + protocol::kPageSize - 1) /
                                                      protocol::kPageSize * protocol::kPageSize
                                                : ro.size;
    absl::StatusOr<std::unique_ptr<FdStore>> memory = FdStore::CreateMemory(ro.name, bytes);
    if (!memory.ok()) return memory.status();
    store = *std::move(memory);
  } else {
    absl::StatusOr<std::unique_ptr<Store>> attached = store_dir_->Attach(&ro);
    if (!attached.ok()) return attached.status();
    store = *std::move(attached);
  }
  const bool restored = ro.state != nullptr && ro.state->restored();
  const bool was_clean = restored && ro.state->was_clean();
  absl::StatusOr<std::unique_ptr<Region>> region = Region::Create(std::move(ro), std::move(store));
  if (region.ok() && restored) {
    LogInfo("region %s: %d of %d pages local from the store (%s)", (*region)->name(),
            (*region)->pages_restored(), (*region)->Stats().pages_total,
            was_clean ? "shut down cleanly" : "not shut down cleanly; same boot");
  }
  return region;
}

absl::Status Engine::RestoreSourcelessRegions() {
  absl::StatusOr<std::vector<Region::Options>> kept =
      store_dir_->SourcelessRegions(options_.max_region_size);
  if (!kept.ok()) return kept.status();
  absl::MutexLock lock(&mu_);
  for (Region::Options& ro : *kept) {
    absl::StatusOr<std::unique_ptr<Region>> region = BuildRegion(std::move(ro));
    if (!region.ok()) return region.status();
    regions_.push_back(*std::move(region));
  }
  return absl::OkStatus();
}

absl::Status Engine::RestoreLocalRegions() {
  absl::StatusOr<std::vector<Region::Options>> kept =
      store_dir_->LocalRegions(options_.max_region_size);
  if (!kept.ok()) return kept.status();
  absl::MutexLock lock(&mu_);
  for (Region::Options& ro : *kept) {
    ro.index = static_cast<uint32_t>(regions_.size());
    absl::StatusOr<std::unique_ptr<Region>> region = BuildRegion(std::move(ro));
    if (!region.ok()) return region.status();
    regions_.push_back(*std::move(region));
  }
  return absl::OkStatus();
}

void Engine::StartPull() {
  if (!options_.store_dir.empty() && options_.checkpoint_interval > absl::ZeroDuration() &&
      !checkpoint_thread_.joinable()) {
    checkpoint_thread_ = std::thread([this] { CheckpointLoop(); });
  }
  if (!options_.prefetch || !has_source() || puller_ != nullptr) return;
  std::vector<Region*> regions;
  {
    absl::MutexLock lock(&mu_);
    for (auto& r : regions_) regions.push_back(r.get());
  }
  puller_ =
      std::make_unique<Puller>(std::move(regions), options_.pull, [this] { OnPullComplete(); });
}

void Engine::OnPullComplete() {
  if (fetcher_ == nullptr) {
    LogInfo("every page is local");
    return;
  }
  LogInfo("every page is local; detaching the page source");
  fetcher_->Detach();
}

void Engine::CheckpointLoop() {
  pthread_setname_np(pthread_self(), "lazyram-ckpt");
  absl::MutexLock lock(&checkpoint_mu_);
  for (;;) {
    checkpoint_mu_.AwaitWithTimeout(absl::Condition(&checkpoint_stop_),
                                    options_.checkpoint_interval);
    if (checkpoint_stop_) return;
    checkpoint_mu_.Unlock();
    const size_t n = region_count();
    for (size_t i = 0; i < n; ++i) {
      if (absl::Status s = region(i)->Sync(); !s.ok()) LogError("checkpoint: %s", s.message());
    }
    checkpoint_mu_.Lock();
  }
}

void Engine::StopCheckpoints() {
  {
    absl::MutexLock lock(&checkpoint_mu_);
    checkpoint_stop_ = true;
  }
  if (checkpoint_thread_.joinable()) checkpoint_thread_.join();
}

absl::Status Engine::CloseStore() {
  StopCheckpoints();
  if (store_dir_ == nullptr) return absl::OkStatus();
  absl::Status result;
  const size_t n = region_count();
  for (size_t i = 0; i < n; ++i) {
    if (absl::Status s = region(i)->Close(); !s.ok() && result.ok()) result = s;
  }
  if (!result.ok()) return result;
  LogInfo("store %s is synced and marked clean", options_.store_dir);
  // Nothing writes to it any more: the next mount may take it at once.
  store_dir_->Unlock();
  return result;
}

void Engine::Shutdown() {
  StopCheckpoints();
  if (puller_ != nullptr) puller_->Stop();
  // Fails whatever is still waiting on the network, so the puller and any
  // prefetch can finish.
  if (fetcher_ != nullptr) fetcher_->Shutdown();
  if (local_source_ != nullptr) local_source_->Shutdown();
  hasher_.Cancel();
  puller_.reset();
}

size_t Engine::region_count() const {
  absl::MutexLock lock(&mu_);
  return regions_.size();
}

Region* Engine::region(size_t index) const {
  absl::MutexLock lock(&mu_);
  return index < regions_.size() ? regions_[index].get() : nullptr;
}

std::optional<size_t> Engine::FindLocked(absl::string_view name) const {
  for (size_t i = 0; i < regions_.size(); ++i) {
    if (!regions_[i]->unlinked() && regions_[i]->name() == name) return i;
  }
  return std::nullopt;
}

std::optional<size_t> Engine::FindRegion(absl::string_view name) const {
  absl::MutexLock lock(&mu_);
  return FindLocked(name);
}

absl::Status Engine::CheckFreeStoreName(absl::string_view name) const {
  if (store_dir_ == nullptr) return absl::OkStatus();
  if (std::find(source_names_.begin(), source_names_.end(), name) != source_names_.end()) {
    return absl::PermissionDeniedError(
        absl::StrCat("'", name,
                     "' names a region of the source: with --store DIR its files "
                     "belong to that region"));
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> Engine::CreateRegion(absl::string_view name) {
  if (read_only()) return absl::PermissionDeniedError("the mount is read-only");
  if (absl::Status s = ValidateRegionName(name); !s.ok()) return s;
  absl::MutexLock ns(&namespace_mu_);
  uint32_t index;
  {
    absl::MutexLock lock(&mu_);
    if (std::optional<size_t> i = FindLocked(name)) return *i;
    index = static_cast<uint32_t>(regions_.size());
  }
  if (absl::Status s = CheckFreeStoreName(name); !s.ok()) return s;
  // Without mu_: with --store DIR this creates files and syncs directories,
  // and every FUSE request takes mu_. namespace_mu_ keeps the slot ours.
  absl::StatusOr<std::unique_ptr<Region>> region = BuildRegion(
      {.name = std::string(name), .index = index, .max_size = options_.max_region_size});
  if (!region.ok()) return region.status();
  absl::MutexLock lock(&mu_);
  regions_.push_back(*std::move(region));
  return regions_.size() - 1;
}

absl::StatusOr<size_t> Engine::UnlinkRegion(absl::string_view name) {
  if (read_only()) return absl::PermissionDeniedError("the mount is read-only");
  absl::MutexLock ns(&namespace_mu_);
  return UnlinkHeld(name);
}

absl::StatusOr<size_t> Engine::UnlinkHeld(absl::string_view name) {
  Region* region;
  size_t index;
  {
    absl::MutexLock lock(&mu_);
    std::optional<size_t> i = FindLocked(name);
    if (!i.has_value()) return absl::NotFoundError(absl::StrCat("no region named '", name, "'"));
    index = *i;
    region = regions_[index].get();
    region->MarkUnlinked();
  }
  if (store_dir_ != nullptr) {
    // The name goes from the store now; the open files keep the bytes
    // until ReleaseRegion.
    if (absl::Status s = store_dir_->Remove(name); !s.ok()) {
      LogError("unlink of %s: %s", name, s.message());
      return s;
    }
  }
  LogInfo("region %s unlinked", name);
  return index;
}

absl::StatusOr<std::optional<size_t>> Engine::RenameRegion(absl::string_view from,
                                                           absl::string_view to, bool noreplace) {
  if (read_only()) return absl::PermissionDeniedError("the mount is read-only");
  if (absl::Status s = ValidateRegionName(to); !s.ok()) return s;
  absl::MutexLock ns(&namespace_mu_);
  Region* region;
  std::optional<size_t> replaced;
  {
    absl::MutexLock lock(&mu_);
    std::optional<size_t> i = FindLocked(from);
    if (!i.has_value()) return absl::NotFoundError(absl::StrCat("no region named '", from, "'"));
    region = regions_[*i].get();
    replaced = FindLocked(to);
    if (replaced == i) return std::optional<size_t>();  // same file: nothing to do
    if (replaced.has_value() && noreplace) {
      return absl::AlreadyExistsError(absl::StrCat("'", to, "' exists"));
    }
  }
  if (store_dir_ != nullptr) {
    if (region->has_source()) {
      return absl::PermissionDeniedError(absl::StrCat(
          "region '", from, "' comes from the source: with --store DIR it keeps its name"));
    }
    if (absl::Status s = CheckFreeStoreName(to); !s.ok()) return s;
  }
  if (replaced.has_value()) {
    if (absl::StatusOr<size_t> gone = UnlinkHeld(to); !gone.ok()) return gone.status();
  }
  if (store_dir_ != nullptr) {
    if (absl::Status s = store_dir_->Rename(region->state_file(), from, to); !s.ok()) {
      LogError("rename of %s to %s: %s", from, to, s.message());
      return s;
    }
  }
  {
    absl::MutexLock lock(&mu_);
    region->set_name(std::string(to));
  }
  LogInfo("region %s renamed to %s", from, to);
  return replaced;
}

void Engine::ReleaseRegion(size_t index) {
  Region* r = region(index);
  if (r == nullptr || !r->unlinked() || r->retired()) return;
  r->Retire();
  LogInfo("unlinked region %s is released: its store is freed", r->name());
}

}  // namespace lazyram
