// A file mapped MAP_SHARED the way QEMU maps a RAMBlock, and the timed
// touches the cases make through it.
#ifndef LAZYRAM_TOOLS_BENCH_MAPPING_H_
#define LAZYRAM_TOOLS_BENCH_MAPPING_H_

#include <cstdint>
#include <string>
#include <vector>

namespace lazyram::bench {

// The whole of one file, MAP_SHARED, at a 2 MiB-aligned address (so that
// MADV_HUGEPAGE can apply, as for QEMU's RAMBlocks), with one madvise()
// advice. Unmapped and closed on destruction; move-only. Fails the case
// (BenchError) when the file cannot be opened or mapped.
class Mapping {
 public:
  enum class Access { kRead, kReadWrite };
  struct Options {
    Access access = Access::kRead;
    int advice = 0;         // MADV_RANDOM, MADV_HUGEPAGE, ...; 0: none
    bool populate = false;  // MAP_POPULATE: fault every page in (read) first
  };
  Mapping(const std::string& path, const Options& options);
  ~Mapping();
  Mapping(Mapping&& other) noexcept;
  Mapping& operator=(Mapping&&) = delete;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  int fd_ = -1;
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// Reads one byte at `offset`; the time it took in microseconds.
double TouchOnce(const Mapping& mapping, uint64_t offset);
// TouchOnce at each offset in order.
std::vector<double> TouchEach(const Mapping& mapping, const std::vector<uint64_t>& offsets);
// Stores the 8-byte `value` at `offset` (8-aligned); microseconds.
double WriteOnce(const Mapping& mapping, uint64_t offset, uint64_t value);
// Fills the 4 KiB page at `offset` with `byte`; microseconds.
double FillPage(const Mapping& mapping, uint64_t offset, uint8_t byte);
// Whether the page at `offset` is in the page cache (mincore): a touch of
// it needs no READ.
bool IsResident(const Mapping& mapping, uint64_t offset);

}  // namespace lazyram::bench

#endif  // LAZYRAM_TOOLS_BENCH_MAPPING_H_
