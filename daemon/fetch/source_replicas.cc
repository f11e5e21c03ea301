#include "daemon/fetch/source_replicas.h"

#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/base/log.h"

namespace lazyram {

absl::string_view ReplicaStateName(SourceReplicas::State state) {
  switch (state) {
    case SourceReplicas::State::kUp:
      return "up";
    case SourceReplicas::State::kStandby:
      return "standby";
    case SourceReplicas::State::kDown:
      return "down";
    case SourceReplicas::State::kRefused:
      return "refused";
  }
  return "unknown";
}

SourceReplicas::SourceReplicas(std::vector<NetAddress> addresses,
                               std::shared_ptr<const AuthKey> key)
    : addresses_(std::move(addresses)), key_(std::move(key)), info_(addresses_.size()) {
  for (size_t i = 0; i < addresses_.size(); ++i) {
    info_[i].url = absl::StrCat("tcp://", addresses_[i].ToString());
  }
}

absl::StatusOr<DialedSource> SourceReplicas::DialAtStart(absl::Duration timeout, uint32_t hints) {
  std::vector<std::optional<absl::StatusOr<DialedSource>>> dialed(addresses_.size());
  {
    // A replica that does not answer costs `timeout` once, not once each.
    std::vector<std::thread> threads;
    for (size_t i = 0; i < addresses_.size(); ++i) {
      threads.emplace_back([this, i, timeout, hints, &dialed] {
        dialed[i] = DialSource(addresses_[i], timeout, key_.get(), hints);
      });
    }
    for (std::thread& t : threads) t.join();
  }
  if (addresses_.size() == 1) {
    if (dialed[0]->ok()) welcome_ = (*dialed[0])->welcome;
    return *std::move(dialed[0]);
  }
  std::optional<size_t> first;
  std::vector<std::string> errors;
  for (size_t i = 0; i < dialed.size() && !first.has_value(); ++i) {
    if (dialed[i]->ok()) {
      first = i;
    } else {
      errors.push_back(absl::StrCat(info_[i].url, ": ", dialed[i]->status().message()));
    }
  }
  if (!first.has_value()) {
    return absl::UnavailableError(
        absl::StrCat("no replica answered (", absl::StrJoin(errors, "; "), ")"));
  }
  welcome_ = (*dialed[*first])->welcome;
  absl::MutexLock lock(&mu_);
  current_ = *first;
  for (size_t i = 0; i < dialed.size(); ++i) {
    if (i == *first) continue;
    if (!dialed[i]->ok()) {
      LogWarning("replica %s: %s", info_[i].url, dialed[i]->status().message());
      info_[i].state = State::kDown;
    } else if (absl::Status s = Check(i, (*dialed[i])->welcome); !s.ok()) {
      LogError("%s", s.message());
      info_[i].state = State::kRefused;
      ++info_[i].refusals;
    }
  }
  return *std::move(dialed[*first]);
}

absl::Status SourceReplicas::Check(size_t index, const protocol::Welcome& welcome) const {
  std::string change = RegionTableChange(welcome_, welcome);
  if (change.empty()) return absl::OkStatus();
  // The single-source wording is kept; replicas say which one differs.
  if (addresses_.size() == 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the page server now serves different regions than at mount time (", change, ")"));
  }
  return absl::FailedPreconditionError(
      absl::StrCat("replica ", info_[index].url,
                   " refused: it serves different regions than the mount's image (", change, ")"));
}

absl::StatusOr<DialedSource> SourceReplicas::DialCurrent(absl::Duration timeout, size_t* index,
                                                         uint32_t hints) {
  {
    absl::MutexLock lock(&mu_);
    *index = current_;
  }
  absl::StatusOr<DialedSource> dialed = DialSource(addresses_[*index], timeout, key_.get(), hints);
  absl::Status status = dialed.status();
  if (status.ok()) status = Check(*index, dialed->welcome);
  if (status.ok()) return dialed;
  absl::MutexLock lock(&mu_);
  Info& info = info_[*index];
  if (absl::IsFailedPrecondition(status) && dialed.ok()) {
    info.state = State::kRefused;
    ++info.refusals;
  } else if (info.connections == 0) {
    info.state = State::kDown;
  }
  AdvanceFrom(*index);
  return status;
}

void SourceReplicas::ConnectionUp(size_t index) {
  absl::MutexLock lock(&mu_);
  ++info_[index].connections;
  info_[index].state = State::kUp;
}

void SourceReplicas::ConnectionDown(size_t index, bool failed) {
  absl::MutexLock lock(&mu_);
  Info& info = info_[index];
  --info.connections;
  if (failed) {
    info.state = State::kDown;
    AdvanceFrom(index);
  } else if (info.connections == 0 && info.state == State::kUp) {
    info.state = State::kStandby;
  }
}

void SourceReplicas::AdvanceFrom(size_t index) {
  if (addresses_.size() == 1 || current_ != index) return;
  current_ = (index + 1) % addresses_.size();
  ++failovers_;
  LogWarning("page server %s failed; failing over to %s", info_[index].url, info_[current_].url);
}

size_t SourceReplicas::current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

uint64_t SourceReplicas::failovers() const {
  absl::MutexLock lock(&mu_);
  return failovers_;
}

std::vector<SourceReplicas::Info> SourceReplicas::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return info_;
}

}  // namespace lazyram
