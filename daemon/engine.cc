#include "daemon/engine.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "daemon/fd_store.h"
#include "daemon/log.h"
#include "daemon/page_server.h"
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
  if (!opts.source.has_value()) return engine;

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

  absl::MutexLock lock(&engine->mu_);
  for (size_t i = 0; i < welcome.regions.size(); ++i) {
    protocol::RegionInfo& info = welcome.regions[i];
    absl::StatusOr<std::unique_ptr<Store>> store =
        engine->MakeStore(info.name, info.page_count() * protocol::kPageSize);
    if (!store.ok()) return store.status();
    Region::Options ro{info.name,
                       static_cast<uint32_t>(i),
                       info.size,
                       engine->fetcher_.get(),
                       std::move(info.zero_extents),
                       info.size};
    absl::StatusOr<std::unique_ptr<Region>> region =
        Region::Create(std::move(ro), *std::move(store));
    if (!region.ok()) return region.status();
    engine->regions_.push_back(*std::move(region));
  }
  return engine;
}

Engine::~Engine() { Shutdown(); }

absl::StatusOr<std::unique_ptr<Store>> Engine::MakeStore(absl::string_view name, uint64_t size) {
  absl::StatusOr<std::unique_ptr<FdStore>> store =
      options_.store_dir.empty() ? FdStore::CreateMemory(name, size)
                                 : FdStore::CreateFile(options_.store_dir, name, size);
  if (!store.ok()) return store.status();
  return std::unique_ptr<Store>(*std::move(store));
}

void Engine::StartPull() {
  if (!options_.prefetch || fetcher_ == nullptr || puller_ != nullptr) return;
  std::vector<Region*> regions;
  {
    absl::MutexLock lock(&mu_);
    for (auto& r : regions_) regions.push_back(r.get());
  }
  puller_ =
      std::make_unique<Puller>(std::move(regions), Puller::Options{}, [this] { OnPullComplete(); });
}

void Engine::OnPullComplete() {
  LogInfo("every page is local; detaching the page source");
  fetcher_->Detach();
}

void Engine::Shutdown() {
  if (puller_ != nullptr) puller_->Stop();
  // Fails whatever is still waiting on the network, so the puller and any
  // prefetch can finish.
  if (fetcher_ != nullptr) fetcher_->Shutdown();
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
  absl::StatusOr<std::unique_ptr<Store>> store = MakeStore(name, 0);
  if (!store.ok()) return store.status();
  Region::Options ro{
      std::string(name),       static_cast<uint32_t>(regions_.size()), 0, nullptr, {},
      options_.max_region_size};
  absl::StatusOr<std::unique_ptr<Region>> region = Region::Create(std::move(ro), *std::move(store));
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
           {"fetch_latency_us",
            {{"p50", s.latency_p50_us}, {"p99", s.latency_p99_us}, {"max", s.latency_max_us}}},
           {"complete", s.complete}});
    }
  }
  std::string source =
      fetcher_ == nullptr ? "none" : std::string(SourceStateName(fetcher_->state()));
  nlohmann::json out = {
      {"source", source}, {"complete", complete}, {"pid", getpid()}, {"regions", regions}};
  if (fetcher_ != nullptr) out["checksum_errors"] = fetcher_->checksum_errors();
  return out;
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
  if (name == "unmount") {
    absl::MutexLock lock(&unmount_mu_);
    if (!unmount_) return ErrorReply(absl::FailedPreconditionError("not mounted"));
    absl::Status s = unmount_();
    return s.ok() ? OkReply() : ErrorReply(s);
  }
  return ErrorReply(absl::InvalidArgumentError(absl::StrCat("unknown command '", name, "'")));
}

}  // namespace lazyram
