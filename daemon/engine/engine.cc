#include "daemon/engine/engine.h"

#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "daemon/base/log.h"
#include "daemon/fetch/source_dialer.h"
#include "daemon/forensics/forensic_views.h"
#include "daemon/local/file_source.h"
#include "daemon/local/qemu_stream_index.h"
#include "daemon/protocol/region_name.h"
#include "daemon/store/direct_file_store.h"
#include "daemon/store/fd_store.h"
#include "daemon/store/store_dir.h"

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
    absl::StatusOr<std::unique_ptr<StoreDir>> store_dir = StoreDir::Open(opts.store_dir);
    if (!store_dir.ok()) return store_dir.status();
    engine->store_dir_ = *std::move(store_dir);
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
    if (engine->store_dir_ != nullptr) {
      if (absl::Status s = engine->RestoreSourcelessRegions(); !s.ok()) return s;
    }
    return engine;
  }

  std::vector<NetAddress> addresses = {*opts.source};
  addresses.insert(addresses.end(), opts.replicas.begin(), opts.replicas.end());
  absl::StatusOr<std::unique_ptr<Fetcher>> fetcher =
      Fetcher::Connect({std::move(addresses), opts.bulk_connections, opts.connect_timeout,
                        opts.auth_key, opts.fetch_timeout, opts.max_fetch_memory});
  if (!fetcher.ok()) return fetcher.status();
  engine->fetcher_ = *std::move(fetcher);
  for (const protocol::RegionInfo& info : engine->fetcher_->welcome().regions) {
    if (absl::Status s = ValidateRegionName(info.name); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("page server sent a bad region: ", s.message()));
    }
  }
  protocol::Welcome welcome = engine->fetcher_->welcome();

  if (engine->store_dir_ != nullptr) {
    if (absl::Status s = engine->store_dir_->CheckSource(welcome.regions); !s.ok()) return s;
  }
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
  if (store_dir_ != nullptr) {
    if (absl::Status s = store_dir_->CheckSource(infos); !s.ok()) return s;
  }
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

absl::StatusOr<std::unique_ptr<Region>> Engine::BuildRegion(Region::Options ro) {
  std::unique_ptr<Store> store;
  if (store_dir_ == nullptr) {
    absl::StatusOr<std::unique_ptr<FdStore>> memory = FdStore::CreateMemory(
        ro.name, (ro.size + protocol::kPageSize - 1) / protocol::kPageSize * protocol::kPageSize);
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
  puller_ = std::make_unique<Puller>(std::move(regions),
                                     Puller::Options{.fault_quiet = options_.pull_yield},
                                     [this] { OnPullComplete(); });
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
  {
    absl::MutexLock lock(&sections_mu_);
    if (region_hook_) {
      for (size_t i = 0; i < regions.size(); ++i) region_hook_(i, &regions[i]);
    }
  }
  std::string source = fetcher_ != nullptr        ? std::string(SourceStateName(fetcher_->state()))
                       : local_source_ != nullptr ? "local"
                                                  : "none";
  nlohmann::json out = {
      {"source", source}, {"complete", complete}, {"pid", getpid()}, {"regions", regions}};
  if (fetcher_ != nullptr) {
    const Fetcher::Stats stats = fetcher_->stats();
    out["checksum_errors"] = stats.checksum_errors;
    out["fetch_timeouts"] = stats.fetch_timeouts;
    out["fetch_memory"] = {{"cap", stats.memory_cap},
                           {"buffers", stats.memory_buffers},
                           {"in_flight", stats.memory_inflight},
                           {"peak", stats.memory_peak},
                           {"waits", stats.memory_waits}};
    const SourceReplicas& replicas = fetcher_->replicas();
    nlohmann::json sources = nlohmann::json::array();
    for (const SourceReplicas::Info& info : replicas.Snapshot()) {
      sources.push_back({{"url", info.url},
                         {"state", std::string(ReplicaStateName(info.state))},
                         {"connections", info.connections},
                         {"refusals", info.refusals}});
    }
    out["current_source"] = sources[replicas.current()]["url"];
    out["sources"] = std::move(sources);
    out["failovers"] = replicas.failovers();
  }
  absl::MutexLock lock(&sections_mu_);
  for (const auto& [key, section] : sections_) out[key] = section();
  return out;
}

void Engine::SetStatusSection(std::string key, absl::AnyInvocable<nlohmann::json() const> section) {
  absl::MutexLock lock(&sections_mu_);
  std::erase_if(sections_, [&](const auto& s) { return s.first == key; });
  if (section) sections_.emplace_back(std::move(key), std::move(section));
}

void Engine::SetRegionStatusHook(RegionStatusHook hook) {
  absl::MutexLock lock(&sections_mu_);
  region_hook_ = std::move(hook);
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
  if (!*poll) {
    // The hook also brings the region's size up to date (a write through
    // FUSE passthrough may have grown it): the run hashes the whole region.
    absl::MutexLock lock(&sections_mu_);
    nlohmann::json ignored;
    if (region_hook_) region_hook_(*index, &ignored);
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
