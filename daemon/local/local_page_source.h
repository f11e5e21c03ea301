// LocalPageSource: a PageSource that reads pages from local files — a raw
// RAM file or an indexed QEMU migration stream, as its PageLocator says —
// with io_uring, from one I/O thread ("lazyram-local") that owns the ring.
//
// Like the Fetcher it never blocks the caller: Fetch queues the request and
// the I/O thread reads, marks all-zero pages zero (so they cost no store
// space) and calls back. Demand requests are served before bulk ones. A
// read error or a file that ends early fails the fetch (kDataLoss /
// the errno's code): unlike a network source there is nothing to retry.
//
// Thread-safety: Fetch and Shutdown may be called from any thread.
// Callbacks run on the I/O thread and must not block.
#ifndef LAZYRAM_DAEMON_LOCAL_LOCAL_PAGE_SOURCE_H_
#define LAZYRAM_DAEMON_LOCAL_LOCAL_PAGE_SOURCE_H_

#include <deque>
#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/base/event_fd.h"
#include "daemon/core/page_source.h"
#include "daemon/local/page_locator.h"

namespace lazyram {

class LocalPageSource : public PageSource {
 public:
  // Starts the I/O thread. The locator is owned from here on.
  static absl::StatusOr<std::unique_ptr<LocalPageSource>> Start(
      std::unique_ptr<PageLocator> locator);
  LocalPageSource(const LocalPageSource&) = delete;
  LocalPageSource& operator=(const LocalPageSource&) = delete;
  ~LocalPageSource() override;

  const PageLocator& locator() const { return *locator_; }

  void Fetch(uint32_t region, uint64_t first_page, uint32_t count, protocol::Priority priority,
             FetchCallback done) override;

  // Fails queued fetches with kCancelled, lets reads in flight finish and
  // stops the I/O thread; later fetches fail with kFailedPrecondition.
  // Idempotent.
  void Shutdown();

 private:
  struct Request {
    uint32_t region = 0;
    uint64_t first_page = 0;
    uint32_t count = 0;
    FetchCallback done;
  };
  class Loop;  // the I/O thread's state; lives in local_page_source.cc

  explicit LocalPageSource(std::unique_ptr<PageLocator> locator);
  void Wake();

  const std::unique_ptr<PageLocator> locator_;
  EventFd wake_;  // the I/O thread waits on it

  absl::Mutex mu_;
  std::deque<Request> demand_ ABSL_GUARDED_BY(mu_);
  std::deque<Request> bulk_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  std::thread thread_;  // last: joined before the members above go away
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_LOCAL_LOCAL_PAGE_SOURCE_H_
