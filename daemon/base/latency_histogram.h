// LatencyHistogram: a lock-free log-linear histogram of microsecond values
// (16 sub-buckets per power of two, so a percentile is within ~6%).
// Record and the queries may run concurrently from any thread.
#ifndef LAZYRAM_DAEMON_BASE_LATENCY_HISTOGRAM_H_
#define LAZYRAM_DAEMON_BASE_LATENCY_HISTOGRAM_H_

#include <array>
#include <atomic>
#include <cstdint>

namespace lazyram {

class LatencyHistogram {
 public:
  void Record(uint64_t micros);
  uint64_t Count() const { return count_.load(std::memory_order_relaxed); }
  uint64_t Max() const { return max_.load(std::memory_order_relaxed); }
  // The upper bound of the bucket holding the q-quantile (0 < q <= 1),
  // capped at Max(); 0 when empty.
  uint64_t Percentile(double q) const;

 private:
  static constexpr int kSubBits = 4;
  static constexpr int kBuckets = 64 << kSubBits;
  static int BucketOf(uint64_t v);
  static uint64_t UpperBound(int bucket);

  std::array<std::atomic<uint64_t>, kBuckets> buckets_{};
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> max_{0};
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_BASE_LATENCY_HISTOGRAM_H_
