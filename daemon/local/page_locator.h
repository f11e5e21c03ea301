// PageLocator: where each page of a local source's regions lives on disk —
// a raw RAM file (FileSource) or an indexed QEMU migration stream
// (QemuStreamIndex). LocalPageSource reads pages through it.
//
// Thread-safety: implementations are immutable once built; every method may
// be called from any thread.
#ifndef LAZYRAM_DAEMON_LOCAL_PAGE_LOCATOR_H_
#define LAZYRAM_DAEMON_LOCAL_PAGE_LOCATOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "daemon/protocol/protocol.h"

namespace lazyram {

struct PageLocation {
  enum class Kind : uint8_t {
    kZero,  // all zero; nothing to read
    kFill,  // every byte is `fill` (QEMU's "zero page" carries a fill byte)
    kFile,  // `length` bytes at `offset` of `fd`; the rest of the page is zero
  };
  Kind kind = Kind::kZero;
  uint8_t fill = 0;
  uint32_t length = 0;
  int fd = -1;
  uint64_t offset = 0;
};

class PageLocator {
 public:
  virtual ~PageLocator() = default;
  // The regions, in index order: name, size and the pages known to be zero.
  virtual const std::vector<protocol::RegionInfo>& regions() const = 0;
  // `page` < the region's page count.
  virtual PageLocation Locate(uint32_t region, uint64_t page) const = 0;
  // What the mount reports as its source ("file:///dev/shm/mem0").
  virtual std::string Describe() const = 0;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_LOCAL_PAGE_LOCATOR_H_
