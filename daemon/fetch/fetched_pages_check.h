// Test helper for fetch/'s unit tests: compares a fetch's reply with the
// image it was served from.
#ifndef LAZYRAM_DAEMON_FETCH_FETCHED_PAGES_CHECK_H_
#define LAZYRAM_DAEMON_FETCH_FETCHED_PAGES_CHECK_H_

#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/core/page_source.h"
#include "daemon/protocol/protocol.h"

namespace lazyram::testing {

// Pages and bytes of `pages` that differ from image[first .. first+count)
// (a zero-flagged page must be all zero in the image); 1 for a failed or
// misaddressed reply. 0: every byte matched.
inline int CountMismatches(const absl::StatusOr<FetchedPages>& pages,
                           const std::vector<uint8_t>& image, uint64_t first, uint32_t count) {
  if (!pages.ok() || pages->first_page != first || pages->count != count) return 1;
  constexpr uint64_t kPage = protocol::kPageSize;
  int errors = 0;
  size_t data = 0;
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t* want = &image[(first + i) * kPage];
    if (pages->flags[i] == static_cast<uint8_t>(protocol::PageFlag::kZero)) {
      for (size_t b = 0; b < kPage; ++b) errors += want[b] != 0;
    } else {
      errors += std::memcmp(pages->payload.data() + data * kPage, want, kPage) != 0;
      ++data;
    }
  }
  return errors;
}

}  // namespace lazyram::testing

#endif  // LAZYRAM_DAEMON_FETCH_FETCHED_PAGES_CHECK_H_
