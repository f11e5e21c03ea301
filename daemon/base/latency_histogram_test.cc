#include "daemon/base/latency_histogram.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

namespace lazyram {
namespace {

TEST(LatencyHistogramTest, EmptyReportsZero) {
  LatencyHistogram h;
  EXPECT_EQ(h.Count(), 0u);
  EXPECT_EQ(h.Max(), 0u);
  EXPECT_EQ(h.Percentile(0.5), 0u);
  EXPECT_EQ(h.Percentile(0.99), 0u);
  EXPECT_EQ(h.Percentile(1.0), 0u);
}

TEST(LatencyHistogramTest, SingleValueIsReportedExactly) {
  // Percentiles are capped at the maximum, so one value comes back as is.
  for (uint64_t v : {uint64_t{0}, uint64_t{1}, uint64_t{15}, uint64_t{16}, uint64_t{17},
                     uint64_t{100}, uint64_t{1000}, uint64_t{123456789}, uint64_t{1} << 40,
                     std::numeric_limits<uint64_t>::max()}) {
    LatencyHistogram h;
    h.Record(v);
    EXPECT_EQ(h.Count(), 1u);
    EXPECT_EQ(h.Max(), v);
    EXPECT_EQ(h.Percentile(0.01), v) << v;
    EXPECT_EQ(h.Percentile(0.5), v) << v;
    EXPECT_EQ(h.Percentile(1.0), v) << v;
  }
}

TEST(LatencyHistogramTest, SmallValuesAreExact) {
  LatencyHistogram h;
  for (uint64_t v = 0; v < 16; ++v) h.Record(v);
  EXPECT_EQ(h.Percentile(1.0 / 16), 0u);
  EXPECT_EQ(h.Percentile(0.5), 7u);
  EXPECT_EQ(h.Percentile(1.0), 15u);
}

TEST(LatencyHistogramTest, PercentilesOfUniformValuesAreClose) {
  LatencyHistogram h;
  for (uint64_t v = 1; v <= 1000; ++v) h.Record(v);
  EXPECT_EQ(h.Count(), 1000u);
  EXPECT_EQ(h.Max(), 1000u);
  for (double q : {0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0}) {
    const double exact = q * 1000;
    const uint64_t got = h.Percentile(q);
    // An upper bucket bound: never below the exact value, at most ~6% above.
    EXPECT_GE(static_cast<double>(got), exact - 1) << "q=" << q;
    EXPECT_LE(std::abs(static_cast<double>(got) - exact), exact * 0.07 + 1) << "q=" << q;
  }
  EXPECT_EQ(h.Percentile(1.0), 1000u);
}

TEST(LatencyHistogramTest, PercentilesAreMonotonic) {
  LatencyHistogram h;
  for (uint64_t v = 1; v < (uint64_t{1} << 40); v = v * 3 + 1) h.Record(v);
  uint64_t last = 0;
  for (int i = 1; i <= 100; ++i) {
    const uint64_t p = h.Percentile(i / 100.0);
    EXPECT_GE(p, last) << i;
    last = p;
  }
  EXPECT_EQ(last, h.Max());
}

TEST(LatencyHistogramTest, MaxIsExact) {
  LatencyHistogram h;
  h.Record(5);
  h.Record(100003);
  h.Record(77);
  EXPECT_EQ(h.Max(), 100003u);
  EXPECT_EQ(h.Percentile(1.0), 100003u);
  EXPECT_LE(h.Percentile(0.5), 80u);
}

TEST(LatencyHistogramTest, ConcurrentRecordsAreAllCounted) {
  constexpr int kThreads = 4;
  constexpr uint64_t kPerThread = 20000;
  LatencyHistogram h;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&h, t] {
      for (uint64_t i = 0; i < kPerThread; ++i) {
        h.Record(i % 1000 + static_cast<uint64_t>(t));
        if (i % 1000 == 0) h.Percentile(0.99);  // readers run alongside
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(h.Count(), kThreads * kPerThread);
  EXPECT_EQ(h.Max(), 999u + kThreads - 1);
  EXPECT_EQ(h.Percentile(1.0), h.Max());
}

}  // namespace
}  // namespace lazyram
