#include "daemon/engine.h"

#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "daemon/direct_file_store.h"
#include "daemon/fd_store.h"
#include "daemon/file_source.h"
#include "daemon/forensic_views.h"
#include "daemon/log.h"
#include "daemon/page_server.h"
#include "daemon/qemu_stream_index.h"
#include "daemon/source_dialer.h"

namespace lazyram {
namespace {

// Prefetch asks for this much at a time: a whole-region prefetch neither
// parks a waiter on every page of a huge region nor queues more than this
// ahead of a consumer's fault on the demand connection.
constexpr uint64_t kPrefetchWindow = 16ull << 20;

}  // namespace

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
    absl::StatusOr<UniqueFd> lock = StateFile::LockStore(opts.store_dir);
    if (!lock.ok()) return lock.status();
    engine->store_lock_ = *std::move(lock);
  }
  if (opts.local_source.has_value()) {
    if (absl::Status s = engine->AttachLocalSource(); !s.ok()) return s;
    return engine;
  }
  if (opts.read_only || opts.machine.has_value()) {
    engine->views_ = std::make_unique<ForensicViews>(
        engine.get(), ForensicViews::Options{opts.machine, "",
                                             opts.source.has_value()
                                                 ? absl::StrCat("tcp://", opts.source->ToString())
                                                 : std::string(),
                                             opts.read_only});
  }
  if (!opts.source.has_value()) {
    if (!opts.store_dir.empty()) {
      if (absl::Status s = engine->OpenStoreDir(nullptr); !s.ok()) return s;
    }
    return engine;
  }

  absl::StatusOr<DialedSource> dialed = DialSource(*opts.source, opts.connect_timeout);
  if (!dialed.ok()) return dialed.status();
  for (const protocol::RegionInfo& info : dialed->welcome.regions) {
    if (absl::Status s = ValidateRegionName(info.name); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("page server sent a bad region: ", s.message()));
    }
  }
  protocol::Welcome welcome = dialed->welcome;
  absl::StatusOr<std::unique_ptr<Fetcher>> fetcher = Fetcher::Start(
      {*opts.source, opts.bulk_connections, opts.connect_timeout}, *std::move(dialed));
  if (!fetcher.ok()) return fetcher.status();
  engine->fetcher_ = *std::move(fetcher);

  engine->source_id_ = SourceId(welcome.regions);
  if (absl::Status s = engine->OpenStoreDir(&welcome.regions); !s.ok()) return s;
  absl::MutexLock lock(&engine->mu_);
  for (size_t i = 0; i < welcome.regions.size(); ++i) {
    protocol::RegionInfo& info = welcome.regions[i];
    Region::Options ro{info.name,
                       static_cast<uint32_t>(i),
                       info.size,
                       engine->fetcher_.get(),
                       std::move(info.zero_extents),
                       info.size};
    absl::StatusOr<std::unique_ptr<Region>> region = engine->BuildRegion(std::move(ro));
    if (!region.ok()) return region.status();
    engine->regions_.push_back(*std::move(region));
  }
  return engine;
}

absl::Status Engine::AttachLocalSource() {
  const SourceUrl& url = *options_.local_source;
  std::unique_ptr<PageLocator> locator;
  std::string qemu_machine;
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
    locator = *std::move(index);
  }
  absl::StatusOr<std::unique_ptr<LocalPageSource>> source =
      LocalPageSource::Start(std::move(locator));
  if (!source.ok()) return source.status();
  local_source_ = *std::move(source);
  const std::vector<protocol::RegionInfo>& infos = local_source_->locator().regions();
  source_id_ = SourceId(infos);
  if (absl::Status s = OpenStoreDir(&infos); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < infos.size(); ++i) {
    const protocol::RegionInfo& info = infos[i];
    Region::Options ro{info.name,           static_cast<uint32_t>(i), info.size,
                       local_source_.get(), info.zero_extents,        info.size};
    absl::StatusOr<std::unique_ptr<Region>> region = BuildRegion(std::move(ro));
    if (!region.ok()) return region.status();
    regions_.push_back(*std::move(region));
  }
  views_ = std::make_unique<ForensicViews>(
      this, ForensicViews::Options{options_.machine, std::move(qemu_machine), url.ToString(),
                                   options_.read_only});
  return absl::OkStatus();
}

Engine::~Engine() { Shutdown(); }

namespace {

// Why a store's state file cannot serve this mount, or OK.
absl::Status CheckSameSource(const StateFile::Identity& have, const StateFile::Identity& want,
                             absl::string_view dir) {
  const std::string fix = "use another --store directory, or empty this one to start over";
  if (have.has_source != want.has_source) {
    return absl::FailedPreconditionError(
        have.has_source
            ? absl::StrCat("store directory ", dir, " was filled from a page source (region '",
                           have.name, "'); mount it with that source, or ", fix)
            : absl::StrCat("store directory ", dir,
                           " holds the files of a mount without a source (region '", have.name,
                           "'); mount it without --source, or ", fix));
  }
  if (have.size != want.size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "store directory ", dir, " belongs to another source: region '", have.name, "' is ",
        have.size, " bytes there and ", want.size, " bytes in this source; ", fix));
  }
  if (have.source_id != want.source_id || have.index != want.index ||
      have.capacity_pages != want.capacity_pages) {
    return absl::FailedPreconditionError(absl::StrCat(
        "store directory ", dir, " belongs to another source: its region table (names, sizes, ",
        "zero ranges) differs from this source's; ", fix));
  }
  return absl::OkStatus();
}

uint64_t PagesFor(uint64_t bytes) {
  return (bytes + protocol::kPageSize - 1) / protocol::kPageSize;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Region>> Engine::BuildRegion(Region::Options ro) {
  const uint64_t bytes = PagesFor(ro.size) * protocol::kPageSize;
  if (options_.store_dir.empty()) {
    absl::StatusOr<std::unique_ptr<FdStore>> store = FdStore::CreateMemory(ro.name, bytes);
    if (!store.ok()) return store.status();
    return Region::Create(std::move(ro), *std::move(store));
  }
  const std::string& dir = options_.store_dir;
  if (ro.name == StateFile::kDirName) {
    return absl::InvalidArgumentError(absl::StrCat("a region named ", StateFile::kDirName,
                                                   " cannot be kept in a --store directory"));
  }
  if (ro.state == nullptr) {
    const bool sourced = ro.source != nullptr;
    StateFile::Identity want{
        ro.name, ro.size,    sourced ? PagesFor(ro.size) : PagesFor(std::max(ro.max_size, ro.size)),
        sourced, source_id_, ro.index};
    absl::StatusOr<std::unique_ptr<StateFile>> state = StateFile::Open(dir, ro.name);
    if (state.ok()) {
      if (absl::Status s = CheckSameSource((*state)->identity(), want, dir); !s.ok()) return s;
      if (absl::Status s = (*state)->CheckUsable(dir); !s.ok()) return s;
    } else if (absl::IsNotFound(state.status())) {
      state = StateFile::Create(dir, want);
    }
    if (!state.ok()) return state.status();
    ro.state = *std::move(state);
  }
  if (ro.state->restored() && access(absl::StrCat(dir, "/", ro.name).c_str(), F_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("store directory ", dir, " has page states for region '", ro.name,
                     "' but not its data file; empty the directory to start over"));
  }
  absl::StatusOr<std::unique_ptr<DirectFileStore>> store =
      ro.state->restored() ? DirectFileStore::Open(dir, ro.name, bytes)
                           : DirectFileStore::Create(dir, ro.name, bytes);
  if (!store.ok()) return store.status();
  const bool restored = ro.state->restored();
  const bool was_clean = ro.state->was_clean();
  absl::StatusOr<std::unique_ptr<Region>> region = Region::Create(std::move(ro), *std::move(store));
  if (region.ok() && restored) {
    LogInfo("region %s: %d of %d pages local from the store (%s)", (*region)->name(),
            (*region)->pages_restored(), PagesFor((*region)->size()),
            was_clean ? "shut down cleanly" : "not shut down cleanly; same boot");
  }
  return region;
}

absl::Status Engine::OpenStoreDir(const std::vector<protocol::RegionInfo>* table) {
  const std::string& dir = options_.store_dir;
  if (dir.empty()) return absl::OkStatus();
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry :
       std::filesystem::directory_iterator(absl::StrCat(dir, "/", StateFile::kDirName), ec)) {
    const std::string file = entry.path().filename();
    if (absl::EndsWith(file, ".state")) names.push_back(file.substr(0, file.size() - 6));
  }
  if (ec) return absl::InternalError(absl::StrCat("listing ", dir, ": ", ec.message()));
  if (table != nullptr) {
    for (const std::string& name : names) {
      if (std::none_of(table->begin(), table->end(),
                       [&](const protocol::RegionInfo& r) { return r.name == name; })) {
        // Say so when the store is a mount's without a source.
        absl::StatusOr<std::unique_ptr<StateFile>> state = StateFile::Open(dir, name);
        if (state.ok() && !(*state)->identity().has_source) {
          StateFile::Identity want = (*state)->identity();
          want.has_source = true;
          return CheckSameSource((*state)->identity(), want, dir);
        }
        return absl::FailedPreconditionError(absl::StrCat(
            "store directory ", dir, " holds region '", name,
            "', which this source does not have: it belongs to another source; use another "
            "--store directory, or empty this one to start over"));
      }
    }
    return absl::OkStatus();
  }
  // A mount without a source: every region the store holds comes back,
  // in the order they were created.
  std::vector<std::unique_ptr<StateFile>> files;
  for (const std::string& name : names) {
    absl::StatusOr<std::unique_ptr<StateFile>> state = StateFile::Open(dir, name);
    if (!state.ok()) return state.status();
    StateFile::Identity none = (*state)->identity();
    none.has_source = false;
    none.source_id = 0;
    if (absl::Status s = CheckSameSource((*state)->identity(), none, dir); !s.ok()) return s;
    if (absl::Status s = (*state)->CheckUsable(dir); !s.ok()) return s;
    files.push_back(*std::move(state));
  }
  std::sort(files.begin(), files.end(),
            [](const auto& a, const auto& b) { return a->identity().index < b->identity().index; });
  absl::MutexLock lock(&mu_);
  for (std::unique_ptr<StateFile>& file : files) {
    Region::Options ro{file->identity().name,
                       static_cast<uint32_t>(regions_.size()),
                       file->identity().size,
                       nullptr,
                       {},
                       options_.max_region_size};
    ro.state = std::move(file);
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
      std::make_unique<Puller>(std::move(regions), Puller::Options{}, [this] { OnPullComplete(); });
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
  if (options_.store_dir.empty()) return absl::OkStatus();
  absl::Status result;
  const size_t n = region_count();
  for (size_t i = 0; i < n; ++i) {
    if (absl::Status s = region(i)->Close(); !s.ok() && result.ok()) result = s;
  }
  if (!result.ok()) return result;
  LogInfo("store %s is synced and marked clean", options_.store_dir);
  // Nothing writes to it any more: the next mount may take it at once.
  store_lock_.reset();
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

std::optional<size_t> Engine::FindRegion(absl::string_view name) const {
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < regions_.size(); ++i) {
    if (regions_[i]->name() == name) return i;
  }
  return std::nullopt;
}

absl::StatusOr<size_t> Engine::CreateRegion(absl::string_view name) {
  if (has_source()) {
    return absl::PermissionDeniedError("regions come from the source; cannot create files here");
  }
  if (absl::Status s = ValidateRegionName(name); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < regions_.size(); ++i) {
    if (regions_[i]->name() == name) return i;
  }
  Region::Options ro{
      std::string(name),       static_cast<uint32_t>(regions_.size()), 0, nullptr, {},
      options_.max_region_size};
  absl::StatusOr<std::unique_ptr<Region>> region = BuildRegion(std::move(ro));
  if (!region.ok()) return region.status();
  regions_.push_back(*std::move(region));
  return regions_.size() - 1;
}

absl::Status Engine::Prefetch(absl::string_view name, std::optional<uint64_t> offset,
                              std::optional<uint64_t> length) {
  std::optional<size_t> index = FindRegion(name);
  if (!index.has_value()) return absl::NotFoundError(absl::StrCat("no region named '", name, "'"));
  Region* r = region(*index);
  const uint64_t size = r->size();
  const uint64_t begin = offset.value_or(0);
  const uint64_t len = length.value_or(size - std::min(begin, size));
  if (begin > size || len > size - begin) {
    return absl::OutOfRangeError(absl::StrCat("range ", begin, "+", len, " is past the end of '",
                                              name, "' (", size, " bytes)"));
  }
  for (uint64_t at = begin; at < begin + len; at += kPrefetchWindow) {
    const uint64_t n = std::min(kPrefetchWindow, begin + len - at);
    absl::Notification done;
    absl::Status status;
    r->Prefetch(at, n, [&](absl::Status s) {
      status = std::move(s);
      done.Notify();
    });
    done.WaitForNotification();
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

nlohmann::json Engine::StatusJson() const {
  nlohmann::json regions = nlohmann::json::array();
  bool complete = true;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& r : regions_) {
      RegionStats s = r->Stats();
      complete = complete && s.complete;
      regions.push_back(
          {{"name", s.name},
           {"size", s.size},
           {"pages_total", s.pages_total},
           {"pages_present", s.pages_present},
           {"pages_dirty", s.pages_dirty},
           {"pages_zero", s.pages_zero},
           {"bytes_fetched", s.bytes_fetched},
           {"demand_fetches", s.demand_fetches},
           {"pages_restored", r->pages_restored()},
           {"fetch_latency_us",
            {{"p50", s.latency_p50_us}, {"p99", s.latency_p99_us}, {"max", s.latency_max_us}}},
           {"complete", s.complete}});
    }
  }
  std::string source = fetcher_ != nullptr        ? std::string(SourceStateName(fetcher_->state()))
                       : local_source_ != nullptr ? "local"
                                                  : "none";
  nlohmann::json out = {
      {"source", source}, {"complete", complete}, {"pid", getpid()}, {"regions", regions}};
  if (fetcher_ != nullptr) out["checksum_errors"] = fetcher_->checksum_errors();
  return out;
}

nlohmann::json Engine::HashReply(const nlohmann::json& request) {
  auto region = request.find("region");
  if (region == request.end() || !region->is_string()) {
    return ErrorReply(absl::InvalidArgumentError("hash needs a \"region\" string"));
  }
  auto flag = [&](const char* key, bool fallback) -> absl::StatusOr<bool> {
    auto it = request.find(key);
    if (it == request.end()) return fallback;
    if (!it->is_boolean()) {
      return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be true or false"));
    }
    return it->get<bool>();
  };
  absl::StatusOr<bool> wait = flag("wait", true), poll = flag("poll", false);
  if (!wait.ok()) return ErrorReply(wait.status());
  if (!poll.ok()) return ErrorReply(poll.status());
  const std::string& name = region->get_ref<const std::string&>();
  std::optional<size_t> index = FindRegion(name);
  if (!index.has_value()) {
    return ErrorReply(absl::NotFoundError(absl::StrCat("no region named '", name, "'")));
  }
  // A fresh run (or the one under way), unless only polling; answered
  // when done with "wait", at once without.
  if (!*poll) hasher_.Start(this->region(*index));
  std::optional<RegionHasher::Progress> progress =
      *wait && !*poll ? hasher_.Wait(name) : hasher_.Get(name);
  if (!progress.has_value()) {
    return ErrorReply(absl::FailedPreconditionError(
        absl::StrCat("region '", name, "' has not been hashed (or the daemon is stopping)")));
  }
  if (!progress->running && !progress->status.ok()) return ErrorReply(progress->status);
  nlohmann::json out = {{"region", name},
                        {"running", progress->running},
                        {"bytes_done", progress->bytes_done},
                        {"bytes_total", progress->bytes_total}};
  if (!progress->running) out["sha256"] = progress->sha256;
  return OkReply(out);
}

void Engine::SetUnmountHandler(absl::AnyInvocable<absl::Status()> handler) {
  absl::MutexLock lock(&unmount_mu_);
  unmount_ = std::move(handler);
}

nlohmann::json Engine::Handle(const nlohmann::json& request) {
  const auto cmd = request.find("cmd");
  if (cmd == request.end() || !cmd->is_string()) {
    return ErrorReply(absl::InvalidArgumentError("request has no \"cmd\" string"));
  }
  const std::string& name = cmd->get_ref<const std::string&>();
  if (name == "status") return OkReply(StatusJson());
  if (name == "prefetch") {
    auto region = request.find("region");
    if (region == request.end() || !region->is_string()) {
      return ErrorReply(absl::InvalidArgumentError("prefetch needs a \"region\" string"));
    }
    auto number = [&](const char* key) -> absl::StatusOr<std::optional<uint64_t>> {
      auto it = request.find(key);
      if (it == request.end()) return std::nullopt;
      if (!it->is_number_unsigned()) {
        return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" must be a byte count"));
      }
      return it->get<uint64_t>();
    };
    absl::StatusOr<std::optional<uint64_t>> offset = number("offset"), length = number("length");
    if (!offset.ok()) return ErrorReply(offset.status());
    if (!length.ok()) return ErrorReply(length.status());
    if (offset->has_value() != length->has_value()) {
      return ErrorReply(absl::InvalidArgumentError("give both offset and length, or neither"));
    }
    absl::Status s = Prefetch(region->get<std::string>(), *offset, *length);
    return s.ok() ? OkReply() : ErrorReply(s);
  }
  if (name == "hash") return HashReply(request);
  if (name == "unmount") {
    absl::MutexLock lock(&unmount_mu_);
    if (!unmount_) return ErrorReply(absl::FailedPreconditionError("not mounted"));
    absl::Status s = unmount_();
    return s.ok() ? OkReply() : ErrorReply(s);
  }
  return ErrorReply(absl::InvalidArgumentError(absl::StrCat("unknown command '", name, "'")));
}

}  // namespace lazyram
