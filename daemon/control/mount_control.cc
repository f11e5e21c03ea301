#include "daemon/control/mount_control.h"

#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"

namespace lazyram {
namespace {

// Prefetch asks for this much at a time: a whole-region prefetch neither
// parks a waiter on every page of a huge region nor queues more than this
// ahead of a consumer's fault on the demand connection.
constexpr uint64_t kPrefetchWindow = 16ull << 20;

}  // namespace

absl::Status MountControl::Prefetch(absl::string_view name, std::optional<uint64_t> offset,
                                    std::optional<uint64_t> length) {
  std::optional<size_t> index = parts_.regions->FindRegion(name);
  if (!index.has_value()) return absl::NotFoundError(absl::StrCat("no region named '", name, "'"));
  Region* r = parts_.regions->region(*index);
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

nlohmann::json MountControl::StatusJson() const {
  nlohmann::json regions = nlohmann::json::array();
  bool complete = true;
  uint64_t store_bytes = 0;
  // Unlinked regions that files still hold open (not yet released): not
  // listed (they have no name), but their store still counts.
  uint64_t unlinked = 0, unlinked_bytes = 0;
  std::vector<bool> listed;
  const size_t count = parts_.regions->region_count();
  for (size_t i = 0; i < count; ++i) {
    Region* r = parts_.regions->region(i);
    {
      RegionStats s = r->Stats();
      store_bytes += s.store_bytes;
      listed.push_back(!r->unlinked());
      if (r->unlinked()) {
        if (!r->retired()) ++unlinked;
        unlinked_bytes += s.store_bytes;
      } else {
        complete = complete && s.complete;
      }
      regions.push_back(
          {{"name", s.name},
           {"size", s.size},
           {"pages_total", s.pages_total},
           {"pages_present", s.pages_present},
           {"pages_dirty", s.pages_dirty},
           {"pages_zero", s.pages_zero},
           {"store_bytes", s.store_bytes},
           {"bytes_fetched", s.bytes_fetched},
           {"demand_fetches", s.demand_fetches},
           {"pages_restored", r->pages_restored()},
           {"fetch_latency_us",
            {{"p50", s.latency_p50_us}, {"p99", s.latency_p99_us}, {"max", s.latency_max_us}}},
           {"complete", s.complete}});
    }
  }
  // The hook takes a region's slot index: fill first, then drop the
  // unlinked ones.
  parts_.sections->FillRegions(&regions);
  nlohmann::json named = nlohmann::json::array();
  for (size_t i = 0; i < regions.size(); ++i) {
    if (listed[i]) named.push_back(std::move(regions[i]));
  }
  regions = std::move(named);
  const Fetcher* fetcher = parts_.fetcher;
  std::string source = fetcher != nullptr    ? std::string(SourceStateName(fetcher->state()))
                       : parts_.local_source ? "local"
                                             : "none";
  nlohmann::json out = {{"source", source},
                        {"complete", complete},
                        {"pid", getpid()},
                        {"regions", regions},
                        {"store_bytes", store_bytes},
                        {"unlinked_regions", unlinked},
                        {"unlinked_store_bytes", unlinked_bytes}};
  if (fetcher != nullptr) {
    const Fetcher::Stats stats = fetcher->stats();
    out["checksum_errors"] = stats.checksum_errors;
    out["fetch_timeouts"] = stats.fetch_timeouts;
    out["fetch_memory"] = {{"cap", stats.memory_cap},
                           {"buffers", stats.memory_buffers},
                           {"in_flight", stats.memory_inflight},
                           {"peak", stats.memory_peak},
                           {"waits", stats.memory_waits}};
    const SourceReplicas& replicas = fetcher->replicas();
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
  parts_.sections->FillSections(&out);
  return out;
}

nlohmann::json MountControl::PrefetchReply(const nlohmann::json& request) {
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

nlohmann::json MountControl::HashReply(const nlohmann::json& request) {
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
  std::optional<size_t> index = parts_.regions->FindRegion(name);
  if (!index.has_value()) {
    return ErrorReply(absl::NotFoundError(absl::StrCat("no region named '", name, "'")));
  }
  if (!*poll) {
    // The run hashes the whole region at its current size.
    parts_.sections->RefreshRegion(*index);
  }
  // A fresh run (or the one under way), unless only polling; answered
  // when done with "wait", at once without.
  if (!*poll) parts_.hasher->Start(parts_.regions->region(*index));
  std::optional<RegionHasher::Progress> progress =
      *wait && !*poll ? parts_.hasher->Wait(name) : parts_.hasher->Get(name);
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

void MountControl::SetUnmountHandler(absl::AnyInvocable<absl::Status()> handler) {
  absl::MutexLock lock(&unmount_mu_);
  unmount_ = std::move(handler);
}

nlohmann::json MountControl::Handle(const nlohmann::json& request) {
  const auto cmd = request.find("cmd");
  if (cmd == request.end() || !cmd->is_string()) {
    return ErrorReply(absl::InvalidArgumentError("request has no \"cmd\" string"));
  }
  const std::string& name = cmd->get_ref<const std::string&>();
  if (name == "status") return OkReply(StatusJson());
  if (name == "prefetch") return PrefetchReply(request);
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
