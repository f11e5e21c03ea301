#include "daemon/fetch/fetcher.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace lazyram {

using protocol::Priority;

absl::string_view SourceStateName(SourceState state) {
  switch (state) {
    case SourceState::kConnected:
      return "connected";
    case SourceState::kReconnecting:
      return "reconnecting";
    case SourceState::kDetached:
      return "detached";
  }
  return "unknown";
}

Fetcher::Fetcher(Options options)
    : options_(std::move(options)), replicas_(options_.addresses, options_.auth_key) {
  const uint64_t buffers =
      static_cast<uint64_t>(1 + options_.bulk_connections) * FetchChannel::kRecvBuffer;
  shared_.replicas = &replicas_;
  shared_.connect_timeout = options_.connect_timeout;
  shared_.fetch_timeout = options_.fetch_timeout;
  shared_.room = options_.max_memory > buffers ? options_.max_memory - buffers : 0;
  shared_.after_direct_send = options_.after_direct_send;
}

uint64_t Fetcher::MinMemory(int bulk_connections) {
  // The buffers, and one maximal request on each connection.
  return static_cast<uint64_t>(1 + bulk_connections) *
         (FetchChannel::kRecvBuffer + FetchChannel::ReplyCost(protocol::kMaxPagesPerRequest));
}

absl::StatusOr<std::unique_ptr<Fetcher>> Fetcher::Connect(Options options) {
  if (options.addresses.empty()) return absl::InvalidArgumentError("no page server to fetch from");
  std::unique_ptr<Fetcher> fetcher(new Fetcher(std::move(options)));
  absl::StatusOr<DialedSource> first = fetcher->replicas_.DialAtStart(
      fetcher->options_.connect_timeout, protocol::kFeatureDemandChannel);
  if (!first.ok()) return first.status();
  absl::StatusOr<std::unique_ptr<FetchChannel>> demand =
      FetchChannel::Start(FetchChannel::Kind::kDemand, &fetcher->shared_, *std::move(first));
  if (!demand.ok()) return demand.status();
  fetcher->demand_ = *std::move(demand);
  // One thread per bulk connection: landing pulled pages (checksum, store
  // write) is most of a pull's CPU, and a second thread can use a second
  // core.
  for (int i = 0; i < fetcher->options_.bulk_connections; ++i) {
    absl::StatusOr<std::unique_ptr<FetchChannel>> bulk =
        FetchChannel::Start(FetchChannel::Kind::kBulk, &fetcher->shared_, std::nullopt);
    if (!bulk.ok()) return bulk.status();
    fetcher->bulk_.push_back(*std::move(bulk));
  }
  return fetcher;
}

void Fetcher::Shutdown() {
  for (auto& bulk : bulk_) bulk->Stop();
  if (demand_ != nullptr) demand_->Stop();
}

Fetcher::~Fetcher() { Shutdown(); }

void Fetcher::Fetch(uint32_t region, uint64_t first_page, uint32_t count, Priority priority,
                    FetchCallback done) {
  // The outage that timed a fetch out goes on: fail at once rather than
  // make every read wait the timeout again.
  if (priority == Priority::kDemand && shared_.failing_fast.load(std::memory_order_relaxed)) {
    shared_.fetch_timeouts.fetch_add(1, std::memory_order_relaxed);
    done(absl::UnavailableError(
        absl::StrCat("the page server did not answer within --fetch-timeout ",
                     absl::FormatDuration(options_.fetch_timeout), " and has not answered since")));
    return;
  }
  FetchRequest request{region, first_page, count, priority, std::move(done)};
  if (priority == Priority::kDemand && options_.fetch_timeout != absl::InfiniteDuration()) {
    request.deadline = absl::Now() + options_.fetch_timeout;
  }
  FetchChannel* channel = demand_.get();
  if (priority != Priority::kDemand) {
    // The bulk channel owing the least.
    channel = nullptr;
    for (auto& bulk : bulk_) {
      if (channel == nullptr || bulk->inflight() < channel->inflight()) channel = bulk.get();
    }
  }
  std::optional<FetchRequest> refused =
      channel != nullptr ? channel->Submit(std::move(request)) : std::move(request);
  if (refused.has_value()) {
    refused->done(absl::FailedPreconditionError("the page source is detached"));
  }
}

void Fetcher::Detach() {
  detached_.store(true, std::memory_order_relaxed);
  demand_->Detach();
  for (auto& bulk : bulk_) bulk->Detach();
}

SourceState Fetcher::state() const {
  if (detached_.load(std::memory_order_relaxed)) return SourceState::kDetached;
  return shared_.connections_up.load(std::memory_order_relaxed) == 1 + options_.bulk_connections
             ? SourceState::kConnected
             : SourceState::kReconnecting;
}

Fetcher::Stats Fetcher::stats() const {
  Stats s;
  s.checksum_errors = shared_.checksum_errors.load(std::memory_order_relaxed);
  s.fetch_timeouts = shared_.fetch_timeouts.load(std::memory_order_relaxed);
  s.memory_cap = options_.max_memory;
  s.memory_buffers =
      (1 + static_cast<uint64_t>(options_.bulk_connections)) * FetchChannel::kRecvBuffer;
  s.memory_inflight = shared_.inflight.load(std::memory_order_relaxed);
  s.memory_peak = s.memory_buffers + shared_.peak.load(std::memory_order_relaxed);
  s.memory_waits = shared_.waits.load(std::memory_order_relaxed);
  return s;
}

}  // namespace lazyram
