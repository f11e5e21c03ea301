// libFuzzer target for the QEMU migration-stream indexer
// (daemon/local/qemu_stream_index.h): the input is the stream file, put in a
// memfd and opened through /proc/self/fd, so nothing touches the disk.
//
// A stream that indexes must give valid region names and sizes, sorted
// in-range zero extents, and page locations inside the stream; a stream
// that does not must say why in a non-empty error. Anything else aborts.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "daemon/base/unique_fd.h"
#include "daemon/local/qemu_stream_index.h"
#include "daemon/protocol/region_name.h"

namespace lazyram {
namespace {

#define FUZZ_CHECK(cond)                                                            \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)

// Locating every page of a big (declared) RAM would make each run slow
// without reaching new code; the first and last pages of each region and a
// stride in between are enough.
constexpr uint64_t kMaxLocates = 4096;
// Streams may declare any amount of RAM; up to 8 GiB (16 MiB of index)
// keeps each run fast, and the limit's own check is exercised past it.
constexpr uint64_t kMaxIndexBytes = 16 << 20;

void CheckIndex(const QemuStreamIndex& index, uint64_t stream_size) {
  FUZZ_CHECK(!index.regions().empty());
  FUZZ_CHECK(index.regions().size() == index.block_names().size());
  FUZZ_CHECK(index.stats().stream_bytes == stream_size);
  FUZZ_CHECK(index.stats().indexed_bytes <= stream_size);
  for (uint32_t r = 0; r < index.regions().size(); ++r) {
    const protocol::RegionInfo& info = index.regions()[r];
    FUZZ_CHECK(ValidateRegionName(info.name).ok());
    FUZZ_CHECK(info.name == QemuStreamIndex::RegionNameFor(index.block_names()[r]));
    FUZZ_CHECK(info.size > 0);
    const uint64_t pages = info.page_count();
    uint64_t next_free = 0;
    for (const protocol::ZeroExtent& e : info.zero_extents) {
      FUZZ_CHECK(e.page_count > 0 && e.first_page >= next_free);
      FUZZ_CHECK(e.first_page + e.page_count <= pages);
      next_free = e.first_page + e.page_count;
    }
    const uint64_t stride = pages / kMaxLocates + 1;
    for (uint64_t i = 0; i <= pages / stride; ++i) {
      const uint64_t p = std::min(i * stride, pages - 1);  // the last page too
      const PageLocation loc = index.Locate(r, p);
      if (loc.kind == PageLocation::Kind::kFile) {
        FUZZ_CHECK(loc.fd >= 0);
        FUZZ_CHECK(loc.length > 0 && loc.length <= protocol::kPageSize);
        FUZZ_CHECK(loc.length ==
                   std::min<uint64_t>(protocol::kPageSize, info.size - p * protocol::kPageSize));
        FUZZ_CHECK(loc.offset < stream_size && loc.length <= stream_size - loc.offset);
      } else if (loc.kind == PageLocation::Kind::kFill) {
        FUZZ_CHECK(loc.fill != 0);
      }
    }
  }
}

}  // namespace
}  // namespace lazyram

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lazyram;
  UniqueFd fd(memfd_create("lazyram-fuzz-stream", MFD_CLOEXEC));
  FUZZ_CHECK(fd.valid());
  for (size_t done = 0; done < size;) {
    const ssize_t n = write(fd.get(), data + done, size - done);
    FUZZ_CHECK(n > 0);
    done += static_cast<size_t>(n);
  }
  absl::StatusOr<std::unique_ptr<QemuStreamIndex>> index =
      QemuStreamIndex::Open(absl::StrCat("/proc/self/fd/", fd.get()), kMaxIndexBytes);
  if (index.ok()) {
    CheckIndex(**index, size);
  } else {
    FUZZ_CHECK(!index.status().message().empty());
  }
  return 0;
}
