#include "daemon/local/local_page_source.h"

#include <pthread.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/base/errno_status.h"
#include "daemon/base/io_ring.h"

namespace lazyram {

using protocol::kPageSize;
using protocol::PageFlag;

namespace {

// Requests being read at once; the rest wait in the queues, so a demand
// request never sits behind more than this many bulk ones.
constexpr size_t kMaxJobs = 32;
// Two pages whose bytes lie at most this far apart in the file are read
// with one read: in a migration stream consecutive pages are separated only
// by their small headers.
constexpr uint64_t kMergeGap = 1024;
constexpr unsigned kRingEntries = 256;

bool IsZeroPage(const uint8_t* p) { return p[0] == 0 && std::memcmp(p, p + 1, kPageSize - 1) == 0; }

}  // namespace

class LocalPageSource::Loop {
 public:
  Loop(LocalPageSource* source, std::unique_ptr<IoRing> ring)
      : source_(source), ring_(std::move(ring)) {}
  ~Loop() { ring_.reset(); }  // cancels the wake read before the source goes

  void Run();

 private:
  struct Job;
  // One read of [offset, offset + length) of `fd`, covering some pages.
  struct Span {
    Job* job = nullptr;
    int fd = -1;
    uint64_t offset = 0;
    uint64_t length = 0;
    uint64_t done = 0;
    std::unique_ptr<uint8_t[]> bytes;
    struct Piece {
      uint32_t slot;  // data page index within the job's payload
      uint64_t at;    // offset within the span
      uint32_t length;
    };
    std::vector<Piece> pieces;
  };
  struct Job {
    Request request;
    std::vector<uint8_t> flags;
    std::vector<uint8_t> payload;  // kPageSize per data page
    std::vector<std::unique_ptr<Span>> spans;
    size_t spans_left = 0;
    absl::Status status;
  };

  void ArmWake();
  // Moves queued requests into jobs while there is room; true if stopping.
  bool Admit();
  void StartJob(Request request);
  void SubmitRead(Span* span);
  void OnRead(Span* span, int res);
  void Finish(Job* job);

  LocalPageSource* const source_;
  std::unique_ptr<IoRing> ring_;
  size_t jobs_ = 0;
};

void LocalPageSource::Loop::ArmWake() {
  io_uring_sqe* sqe = ring_->GetSqe();
  source_->wake_.PrepareRead(sqe);
  io_uring_sqe_set_data(sqe, nullptr);
}

bool LocalPageSource::Loop::Admit() {
  std::vector<Request> start, cancel;
  bool stopping;
  {
    absl::MutexLock lock(&source_->mu_);
    stopping = source_->stopping_;
    if (stopping) {
      for (auto* q : {&source_->demand_, &source_->bulk_}) {
        while (!q->empty()) {
          cancel.push_back(std::move(q->front()));
          q->pop_front();
        }
      }
    }
    while (!stopping && jobs_ + start.size() < kMaxJobs) {
      auto* q = !source_->demand_.empty() ? &source_->demand_ : &source_->bulk_;
      if (q->empty()) break;
      start.push_back(std::move(q->front()));
      q->pop_front();
    }
  }
  for (Request& r : cancel) r.done(absl::CancelledError("the page source is shutting down"));
  for (Request& r : start) StartJob(std::move(r));
  return stopping;
}

void LocalPageSource::Loop::StartJob(Request request) {
  auto* job = new Job;
  ++jobs_;
  job->request = std::move(request);
  const Request& r = job->request;
  job->flags.assign(r.count, static_cast<uint8_t>(PageFlag::kZero));
  uint32_t slots = 0;
  Span* span = nullptr;
  std::vector<std::pair<uint32_t, uint8_t>> fills;
  for (uint32_t i = 0; i < r.count; ++i) {
    const PageLocation loc = source_->locator_->Locate(r.region, r.first_page + i);
    if (loc.kind == PageLocation::Kind::kZero ||
        (loc.kind == PageLocation::Kind::kFill && loc.fill == 0) ||
        (loc.kind == PageLocation::Kind::kFile && loc.length == 0)) {
      continue;
    }
    job->flags[i] = static_cast<uint8_t>(PageFlag::kData);
    const uint32_t slot = slots++;
    if (loc.kind == PageLocation::Kind::kFill) {
      fills.emplace_back(slot, loc.fill);
      continue;
    }
    const bool extend = span != nullptr && span->fd == loc.fd &&
                        loc.offset >= span->offset + span->length &&
                        loc.offset - (span->offset + span->length) <= kMergeGap;
    if (!extend) {
      job->spans.push_back(std::make_unique<Span>());
      span = job->spans.back().get();
      span->job = job;
      span->fd = loc.fd;
      span->offset = loc.offset;
    }
    span->pieces.push_back({slot, loc.offset - span->offset, loc.length});
    span->length = loc.offset + loc.length - span->offset;
  }
  job->payload.assign(static_cast<size_t>(slots) * kPageSize, 0);
  for (const auto& [slot, fill] : fills) {
    std::memset(job->payload.data() + static_cast<size_t>(slot) * kPageSize, fill, kPageSize);
  }
  job->spans_left = job->spans.size();
  if (job->spans_left == 0) return Finish(job);
  for (auto& s : job->spans) {
    s->bytes.reset(new uint8_t[s->length]);
    SubmitRead(s.get());
  }
}

void LocalPageSource::Loop::SubmitRead(Span* span) {
  io_uring_sqe* sqe = ring_->GetSqe();
  const uint64_t left = span->length - span->done;
  io_uring_prep_read(sqe, span->fd, span->bytes.get() + span->done,
                     static_cast<unsigned>(std::min<uint64_t>(left, 1u << 30)),
                     span->offset + span->done);
  io_uring_sqe_set_data(sqe, span);
}

void LocalPageSource::Loop::OnRead(Span* span, int res) {
  Job* job = span->job;
  if (res == -EINTR || res == -EAGAIN) return SubmitRead(span);
  if (res < 0) {
    if (job->status.ok()) {
      job->status = ErrnoStatus(-res, absl::StrCat("reading ", source_->locator_->Describe()));
    }
  } else if (res == 0) {
    if (job->status.ok()) {
      job->status = absl::DataLossError(absl::StrCat(source_->locator_->Describe(),
                                                     " ends at byte ", span->offset + span->done,
                                                     "; it was longer when the mount started"));
    }
  } else {
    span->done += static_cast<uint64_t>(res);
    if (span->done < span->length) return SubmitRead(span);
    for (const Span::Piece& p : span->pieces) {
      std::memcpy(job->payload.data() + static_cast<size_t>(p.slot) * kPageSize,
                  span->bytes.get() + p.at, p.length);
    }
  }
  span->bytes.reset();
  if (--job->spans_left == 0) Finish(job);
}

void LocalPageSource::Loop::Finish(Job* job) {
  std::unique_ptr<Job> owned(job);
  --jobs_;
  FetchCallback done = std::move(job->request.done);
  if (!job->status.ok()) return done(job->status);
  // Pages that turn out all zero are reported as zero: the store stays
  // sparse and `status` counts them as such.
  size_t in = 0, out = 0;
  for (uint8_t& flag : job->flags) {
    if (flag != static_cast<uint8_t>(PageFlag::kData)) continue;
    const uint8_t* page = job->payload.data() + in * kPageSize;
    if (IsZeroPage(page)) {
      flag = static_cast<uint8_t>(PageFlag::kZero);
    } else {
      if (in != out) std::memmove(job->payload.data() + out * kPageSize, page, kPageSize);
      ++out;
    }
    ++in;
  }
  FetchedPages pages{job->request.first_page, job->request.count, job->flags,
                     std::span<const uint8_t>(job->payload.data(), out * kPageSize)};
  done(pages);
}

void LocalPageSource::Loop::Run() {
  ArmWake();
  for (;;) {
    const bool stopping = Admit();
    if (stopping && jobs_ == 0) return;
    io_uring_submit_and_wait(ring_->get(), 1);
    io_uring_cqe* cqe;
    unsigned head, seen = 0;
    std::vector<std::pair<Span*, int>> reads;
    bool woken = false;
    io_uring_for_each_cqe(ring_->get(), head, cqe) {
      ++seen;
      auto* span = static_cast<Span*>(io_uring_cqe_get_data(cqe));
      if (span == nullptr) {
        woken = true;
      } else {
        reads.emplace_back(span, cqe->res);
      }
    }
    io_uring_cq_advance(ring_->get(), seen);
    // Completions are handled after the batch is released: handling one
    // may submit (a short read goes on) and so need the ring's space.
    for (const auto& [span, res] : reads) OnRead(span, res);
    if (woken) ArmWake();
  }
}

LocalPageSource::LocalPageSource(std::unique_ptr<PageLocator> locator)
    : locator_(std::move(locator)) {}

absl::StatusOr<std::unique_ptr<LocalPageSource>> LocalPageSource::Start(
    std::unique_ptr<PageLocator> locator) {
  std::unique_ptr<LocalPageSource> source(new LocalPageSource(std::move(locator)));
  absl::StatusOr<EventFd> wake = EventFd::Create();
  if (!wake.ok()) return wake.status();
  source->wake_ = *std::move(wake);
  // The ring must be created on its owner thread (SINGLE_ISSUER): the
  // thread reports whether that worked before Start returns.
  absl::Mutex started_mu;
  std::optional<absl::Status> started;
  LocalPageSource* self = source.get();
  source->thread_ = std::thread([self, &started_mu, &started] {
    pthread_setname_np(pthread_self(), "lazyram-local");
    absl::StatusOr<std::unique_ptr<IoRing>> ring = IoRing::Create(kRingEntries);
    {
      absl::MutexLock lock(&started_mu);
      started = ring.status();
    }
    if (!ring.ok()) return;
    Loop loop(self, *std::move(ring));
    loop.Run();
  });
  absl::Status status;
  {
    absl::MutexLock lock(&started_mu);
    started_mu.Await(absl::Condition(
        +[](std::optional<absl::Status>* s) { return s->has_value(); }, &started));
    status = *started;
  }
  if (!status.ok()) {
    source->thread_.join();
    return status;
  }
  return source;
}

LocalPageSource::~LocalPageSource() { Shutdown(); }

void LocalPageSource::Fetch(uint32_t region, uint64_t first_page, uint32_t count,
                            protocol::Priority priority, FetchCallback done) {
  const auto& regions = locator_->regions();
  if (region >= regions.size() || count == 0 || count > protocol::kMaxPagesPerRequest ||
      first_page >= regions[region].page_count() ||
      count > regions[region].page_count() - first_page) {
    return done(absl::OutOfRangeError(
        absl::StrCat("pages ", first_page, "+", count, " are not in region ", region)));
  }
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      (priority == protocol::Priority::kDemand ? demand_ : bulk_)
          .push_back({region, first_page, count, std::move(done)});
      done = nullptr;
    }
  }
  if (done) return done(absl::FailedPreconditionError("the page source was shut down"));
  Wake();
}

void LocalPageSource::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  Wake();
  if (thread_.joinable()) thread_.join();
}

void LocalPageSource::Wake() { wake_.Signal(); }

}  // namespace lazyram
