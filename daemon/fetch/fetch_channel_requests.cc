// FetchChannel's requests owed: the shared memory budget they are charged
// to, moving queued ones onto the connection, the deadlines (the demand
// fetch timeout, the stall check) and matching each reply to its request.
#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/base/log.h"
#include "daemon/fetch/fetch_channel.h"
#include "daemon/fetch/fetch_channel_connection.h"

namespace lazyram {

using fetch_channel_internal::kStallTimeout;
using protocol::FrameType;

absl::Time FetchChannel::ExpireDemand() {
  if (kind_ != Kind::kDemand || shared_->fetch_timeout == absl::InfiniteDuration()) {
    return absl::InfiniteFuture();
  }
  const absl::Time now = absl::Now();
  absl::Time next = absl::InfiniteFuture();
  std::vector<FetchCallback> expired;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (it->deadline <= now) {
        expired.push_back(std::move(it->done));
        it = queue_.erase(it);
      } else {
        next = std::min(next, it->deadline);
        ++it;
      }
    }
    // Sent ones stay outstanding, so that their late reply is recognised
    // (and dropped) rather than taken for a protocol error.
    for (auto& [tag, request] : conn_->outstanding) {
      if (request.expired) continue;
      if (request.deadline <= now) {
        request.expired = true;
        expired.push_back(std::move(request.done));
      } else {
        next = std::min(next, request.deadline);
      }
    }
  }
  if (expired.empty()) return next;
  shared_->fetch_timeouts.fetch_add(expired.size(), std::memory_order_relaxed);
  shared_->failing_fast.store(true, std::memory_order_relaxed);
  LogWarning("%d demand fetch(es) not answered within --fetch-timeout %s: failed", expired.size(),
             absl::FormatDuration(shared_->fetch_timeout));
  const absl::Status error =
      absl::UnavailableError(absl::StrCat("the page server did not answer within --fetch-timeout ",
                                          absl::FormatDuration(shared_->fetch_timeout)));
  for (FetchCallback& done : expired) done(error);
  return next;
}

absl::Time FetchChannel::FailStalled() {
  absl::Time next = absl::InfiniteFuture();
  if (shared_->replicas->size() < 2) return next;
  absl::Time progress;
  {
    absl::MutexLock lock(&mu_);
    if (!conn_->up || conn_->outstanding.empty()) return next;
    progress = conn_->last_progress;
  }
  if (absl::Now() - progress < kStallTimeout) return progress + kStallTimeout;
  Fail(absl::UnavailableError(absl::StrCat("no reply for ", absl::FormatDuration(kStallTimeout))));
  return next;
}

void FetchChannel::Charge(uint64_t bytes) {
  my_inflight_.fetch_add(bytes, std::memory_order_relaxed);
  const uint64_t now = shared_->inflight.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  uint64_t peak = shared_->peak.load(std::memory_order_relaxed);
  while (now > peak && !shared_->peak.compare_exchange_weak(peak, now)) {
  }
}

void FetchChannel::Refund(uint64_t bytes) {
  my_inflight_.fetch_sub(bytes, std::memory_order_relaxed);
  shared_->inflight.fetch_sub(bytes, std::memory_order_relaxed);
}

bool FetchChannel::Fits(FetchRequest& request, uint64_t limit) {
  // A request that does not fit waits for replies to land; one alone in
  // flight on its channel is always let through, so a tiny cap still makes
  // progress and bulk transfers never starve demand fetches.
  const uint64_t inflight = shared_->inflight.load(std::memory_order_relaxed);
  if (my_inflight_.load(std::memory_order_relaxed) == 0 ||
      inflight + ReplyCost(request.count) <= limit) {
    return true;
  }
  if (!request.waited) {
    request.waited = true;
    shared_->waits.fetch_add(1, std::memory_order_relaxed);
  }
  return false;
}

void FetchChannel::Distribute() {
  absl::MutexLock lock(&mu_);
  // Bulk leaves a quarter of the room to demand fetches.
  const uint64_t limit = kind_ == Kind::kDemand ? shared_->room : shared_->room - shared_->room / 4;
  Connection& c = *conn_;
  while (c.up && !queue_.empty() && Fits(queue_.front(), limit)) {
    FetchRequest r = std::move(queue_.front());
    queue_.pop_front();
    const uint64_t tag = next_tag_++;
    protocol::AppendRead(tag, {r.region, r.count, r.first_page, r.priority}, &c.out);
    Charge(ReplyCost(r.count));
    if (c.outstanding.empty()) c.last_progress = absl::Now();
    c.outstanding.emplace(tag, std::move(r));
  }
}

absl::Status FetchChannel::HandleFrame(const protocol::FrameHeader& header,
                                       std::span<const uint8_t> body) {
  Connection& c = *conn_;
  if (header.type != FrameType::kError && header.type != FrameType::kPages) {
    return absl::InvalidArgumentError("unexpected frame type from the page server");
  }
  // Checked before the request is taken: a bad frame leaves it outstanding,
  // to be sent again on the next connection.
  absl::StatusOr<protocol::ErrorReply> error;
  absl::StatusOr<protocol::PagesView> pages;
  if (header.type == FrameType::kError) {
    error = protocol::DecodeError(body);
    if (!error.ok()) return error.status();
  } else {
    pages = protocol::DecodePages(body);
    if (!pages.ok()) {
      if (absl::IsDataLoss(pages.status())) {
        shared_->checksum_errors.fetch_add(1, std::memory_order_relaxed);
      }
      return pages.status();
    }
  }
  FetchRequest request;
  {
    absl::MutexLock lock(&mu_);
    auto it = c.outstanding.find(header.tag);
    if (it == c.outstanding.end()) {
      return absl::InvalidArgumentError(absl::StrCat("reply with unknown tag ", header.tag));
    }
    if (pages.ok() &&
        (pages->region != it->second.region || pages->first_page != it->second.first_page ||
         pages->count != it->second.count)) {
      return absl::InvalidArgumentError("reply does not match its request");
    }
    request = std::move(it->second);
    c.outstanding.erase(it);
    Refund(ReplyCost(request.count));
    if (request.expired) return absl::OkStatus();  // its waiters were told already
    if (error.ok() && error->code == protocol::ErrorCode::kBusy) {
      queue_.push_back(std::move(request));
      return absl::OkStatus();
    }
  }
  if (error.ok()) {
    LogError("page server refused a read of region %u pages %u+%u: %s", request.region,
             request.first_page, request.count, error->message);
    request.done(protocol::ErrorToStatus(*error));
    return absl::OkStatus();
  }
  request.done(FetchedPages{pages->first_page, pages->count, pages->flags, pages->payload});
  return absl::OkStatus();
}

}  // namespace lazyram
