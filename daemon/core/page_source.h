// PageSource: where absent pages come from. The Fetcher (page server over
// TCP) is the real one; unit tests use a fake.
#ifndef LAZYRAM_DAEMON_CORE_PAGE_SOURCE_H_
#define LAZYRAM_DAEMON_CORE_PAGE_SOURCE_H_

#include <cstdint>
#include <span>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "daemon/protocol/protocol.h"

namespace lazyram {

// Pages as they arrived. The spans are valid only during the callback.
struct FetchedPages {
  uint64_t first_page = 0;
  uint32_t count = 0;
  std::span<const uint8_t> flags;    // protocol::PageFlag per page
  std::span<const uint8_t> payload;  // kPageSize bytes per kData page, in order
};

using FetchCallback = absl::AnyInvocable<void(absl::StatusOr<FetchedPages>)>;

class PageSource {
 public:
  virtual ~PageSource() = default;
  // Fetches `count` (1..kMaxPagesPerRequest) pages of region `region`.
  // `done` runs exactly once, on a thread of the source's choosing, with the
  // pages or with an error once the source gives up (it does not give up
  // while it can still reconnect, unless told to time out).
  virtual void Fetch(uint32_t region, uint64_t first_page, uint32_t count,
                     protocol::Priority priority, FetchCallback done) = 0;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_CORE_PAGE_SOURCE_H_
