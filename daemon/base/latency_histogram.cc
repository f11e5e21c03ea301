#include "daemon/base/latency_histogram.h"

#include <algorithm>
#include <bit>

namespace lazyram {

int LatencyHistogram::BucketOf(uint64_t v) {
  if (v < (1u << kSubBits)) return static_cast<int>(v);
  const int msb = 63 - std::countl_zero(v);
  const int sub = static_cast<int>((v >> (msb - kSubBits)) & ((1u << kSubBits) - 1));
  return ((msb - kSubBits + 1) << kSubBits) + sub;
}

uint64_t LatencyHistogram::UpperBound(int bucket) {
  if (bucket < (1 << kSubBits)) return static_cast<uint64_t>(bucket);
  const int msb = (bucket >> kSubBits) + kSubBits - 1;
  const uint64_t sub = static_cast<uint64_t>(bucket & ((1 << kSubBits) - 1));
  const uint64_t lo = (uint64_t{1} << msb) | (sub << (msb - kSubBits));
  return lo + (uint64_t{1} << (msb - kSubBits)) - 1;
}

void LatencyHistogram::Record(uint64_t micros) {
  buckets_[BucketOf(micros)].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  uint64_t prev = max_.load(std::memory_order_relaxed);
  while (micros > prev && !max_.compare_exchange_weak(prev, micros, std::memory_order_relaxed)) {
  }
}

uint64_t LatencyHistogram::Percentile(double q) const {
  const uint64_t total = Count();
  if (total == 0) return 0;
  const auto rank = static_cast<uint64_t>(std::max(1.0, q * static_cast<double>(total) + 0.5));
  uint64_t seen = 0;
  for (int b = 0; b < kBuckets; ++b) {
    seen += buckets_[b].load(std::memory_order_relaxed);
    if (seen >= rank) return std::min(UpperBound(b), Max());
  }
  return Max();
}

}  // namespace lazyram
