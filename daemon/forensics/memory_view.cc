#include "daemon/forensics/memory_view.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "absl/synchronization/mutex.h"

namespace lazyram {

// One Read in flight: the buffer, the region ranges still awaited (plus one
// held while they are being asked for), and the first error.
struct MemoryView::Pending {
  std::shared_ptr<const MemoryView> view;
  std::vector<uint8_t> buf;
  struct Piece {
    Region* region;
    uint64_t region_offset;
    size_t at;  // within buf
    size_t length;
  };
  std::vector<Piece> pieces;
  std::atomic<size_t> remaining{1};
  absl::Mutex mu;
  absl::Status status ABSL_GUARDED_BY(mu);
  ReadDone done;

  void Arrived(const absl::Status& s) {
    if (!s.ok()) {
      absl::MutexLock lock(&mu);
      if (status.ok()) status = s;
    }
    if (remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    Finish();
  }

  void Finish() {
    absl::Status result;
    {
      absl::MutexLock lock(&mu);
      result = status;
    }
    for (const Piece& p : pieces) {
      if (!result.ok()) break;
      // The region may have shrunk since the view was built (a mount
      // without a source): what is gone reads as zero.
      const uint64_t size = p.region->size();
      const size_t have =
          p.region_offset >= size
              ? 0
              : static_cast<size_t>(std::min<uint64_t>(p.length, size - p.region_offset));
      if (have > 0) {
        result = p.region->store().Read(p.region_offset, std::span(buf.data() + p.at, have));
      }
    }
    ReadDone callback = std::move(done);
    std::unique_ptr<Pending> self(this);
    if (!result.ok()) return callback(std::move(result));
    callback(std::move(buf));
  }
};

const std::string& LazyBytes::Get() const {
  absl::call_once(once_, [this] {
    bytes_ = make_();
    bytes_.resize(static_cast<size_t>(length_), '\0');
    make_ = nullptr;
  });
  return bytes_;
}

MemoryView::MemoryView(std::vector<Segment> segments) : segments_(std::move(segments)) {
  for (const Segment& s : segments_) {
    starts_.push_back(size_);
    size_ += s.length;
  }
}

void MemoryView::Read(uint64_t offset, uint64_t length, ReadDone done) const {
  if (offset >= size_ || length == 0) return done(std::vector<uint8_t>());
  length = std::min(length, size_ - offset);
  auto* pending = new Pending;
  pending->view = shared_from_this();
  pending->buf.assign(static_cast<size_t>(length), 0);
  pending->done = std::move(done);
  const uint64_t end = offset + length;
  size_t i = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), offset) -
                                 starts_.begin() - 1);
  for (; i < segments_.size() && starts_[i] < end; ++i) {
    const Segment& s = segments_[i];
    const uint64_t from = std::max(offset, starts_[i]);
    const uint64_t to = std::min(end, starts_[i] + s.length);
    if (from >= to) continue;
    const size_t at = static_cast<size_t>(from - offset);
    const uint64_t within = from - starts_[i];
    if (s.kind == Segment::Kind::kBytes) {
      std::memcpy(pending->buf.data() + at, s.bytes.data() + within, to - from);
    } else if (s.kind == Segment::Kind::kLazyBytes) {
      std::memcpy(pending->buf.data() + at, s.lazy->Get().data() + within, to - from);
    } else if (s.kind == Segment::Kind::kRegion) {
      pending->pieces.push_back(
          {s.region, s.region_offset + within, at, static_cast<size_t>(to - from)});
    }
  }
  pending->remaining.store(pending->pieces.size() + 1);
  // Copied first: a piece may complete (and free `pending`) before the
  // loop moves on.
  const std::vector<Pending::Piece> pieces = pending->pieces;
  for (const Pending::Piece& p : pieces) {
    const uint64_t size = p.region->size();
    const uint64_t len =
        p.region_offset >= size ? 0 : std::min<uint64_t>(p.length, size - p.region_offset);
    if (len == 0) {
      pending->Arrived(absl::OkStatus());
      continue;
    }
    p.region->EnsureLocal(p.region_offset, len, protocol::Priority::kDemand,
                          [pending](absl::Status s) { pending->Arrived(s); });
  }
  pending->Arrived(absl::OkStatus());
}

std::optional<uint64_t> MemoryView::SeekData(uint64_t offset) const {
  for (size_t i = 0; i < segments_.size(); ++i) {
    const uint64_t seg_end = starts_[i] + segments_[i].length;
    if (seg_end <= offset || segments_[i].kind == Segment::Kind::kZero) continue;
    return std::max(offset, starts_[i]);
  }
  return std::nullopt;
}

uint64_t MemoryView::SeekHole(uint64_t offset) const {
  for (size_t i = 0; i < segments_.size(); ++i) {
    const uint64_t seg_end = starts_[i] + segments_[i].length;
    if (seg_end <= offset || segments_[i].kind != Segment::Kind::kZero) continue;
    return std::max(offset, starts_[i]);
  }
  return size_;
}

}  // namespace lazyram
