// MemoryView: a read-only virtual file stitched from segments — literal
// bytes (a header), bytes made on first read (LazyBytes: vmcore.elf's
// header, which waits for the guest kernel search), zeros (a hole), and
// ranges of a region. The views of views/ (physmem.raw, physmem.lime,
// vmcore.elf) are MemoryViews.
//
// Read never blocks, except on a LazyBytes segment's first read (which
// makes its bytes in the reading thread; others wait for it): it asks each region for its range
// with EnsureLocal (fetching what is absent at demand priority) and calls back once every byte is
// there, from whichever thread made the last range local (or inline). The reply is always the full
// requested length, clipped only at the view's end.
//
// Immutable once built; every method may be called from any thread. The
// regions must outlive the view; hold views by shared_ptr so a read in
// flight keeps its view alive.
#ifndef LAZYRAM_DAEMON_FORENSICS_MEMORY_VIEW_H_
#define LAZYRAM_DAEMON_FORENSICS_MEMORY_VIEW_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/call_once.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "daemon/core/region.h"

namespace lazyram {

// Bytes made once, on first use, by `make`; padded with zeros or cut to
// `length`. Thread-safe.
class LazyBytes {
 public:
  LazyBytes(uint64_t length, absl::AnyInvocable<std::string()> make)
      : length_(length), make_(std::move(make)) {}
  const std::string& Get() const;

 private:
  const uint64_t length_;
  mutable absl::once_flag once_;
  mutable absl::AnyInvocable<std::string()> make_;
  mutable std::string bytes_;
};

class MemoryView : public std::enable_shared_from_this<MemoryView> {
 public:
  struct Segment {
    enum class Kind { kBytes, kZero, kRegion, kLazyBytes };
    Kind kind = Kind::kZero;
    uint64_t length = 0;
    std::string bytes;                      // kBytes: exactly `length` bytes
    std::shared_ptr<const LazyBytes> lazy;  // kLazyBytes
    Region* region = nullptr;               // kRegion
    uint64_t region_offset = 0;             // kRegion
  };
  using ReadDone = absl::AnyInvocable<void(absl::StatusOr<std::vector<uint8_t>>)>;

  // Segments in file order; the view's size is the sum of their lengths.
  explicit MemoryView(std::vector<Segment> segments);
  MemoryView(const MemoryView&) = delete;
  MemoryView& operator=(const MemoryView&) = delete;

  uint64_t size() const { return size_; }

  // Reads [offset, offset + length), clipped at size(); `done` receives
  // exactly that many bytes, or the first error.
  void Read(uint64_t offset, uint64_t length, ReadDone done) const;

  // lseek(SEEK_DATA / SEEK_HOLE) from `offset` < size(): zero segments
  // are holes, everything else is data, and the end of the view is a hole.
  // SeekData is nullopt when only holes follow (ENXIO).
  std::optional<uint64_t> SeekData(uint64_t offset) const;
  uint64_t SeekHole(uint64_t offset) const;

 private:
  struct Pending;
  std::vector<Segment> segments_;
  std::vector<uint64_t> starts_;  // file offset of each segment
  uint64_t size_ = 0;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_FORENSICS_MEMORY_VIEW_H_
