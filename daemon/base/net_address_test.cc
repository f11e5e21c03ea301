#include "daemon/base/net_address.h"

#include <gtest/gtest.h>

#include "daemon/base/log_limiter.h"

namespace lazyram {
namespace {

bool Loopback(const std::string& host) {
  absl::StatusOr<bool> loopback = IsLoopback({host, 7070});
  EXPECT_TRUE(loopback.ok()) << host << ": " << loopback.status();
  return loopback.value_or(false);
}

TEST(IsLoopbackTest, LoopbackAddressesAndNames) {
  EXPECT_TRUE(Loopback("127.0.0.1"));
  EXPECT_TRUE(Loopback("127.1.2.3"));  // all of 127.0.0.0/8
  EXPECT_TRUE(Loopback("::1"));
  EXPECT_TRUE(Loopback("::ffff:127.0.0.1"));
  EXPECT_TRUE(Loopback("localhost"));
}

TEST(IsLoopbackTest, EverythingElse) {
  EXPECT_FALSE(Loopback("0.0.0.0"));  // every interface
  EXPECT_FALSE(Loopback("::"));
  EXPECT_FALSE(Loopback("192.0.2.1"));
  EXPECT_FALSE(Loopback("10.0.0.1"));
  EXPECT_FALSE(Loopback("128.0.0.1"));
  EXPECT_FALSE(Loopback("::ffff:10.0.0.1"));
  EXPECT_FALSE(Loopback("fd00::2"));
}

TEST(LogLimiterTest, OneLinePerIntervalAndCountsTheRest) {
  LogLimiter limiter(absl::Hours(1));
  uint64_t suppressed = 99;
  EXPECT_TRUE(limiter.Allow(&suppressed));
  EXPECT_EQ(suppressed, 0u);
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(limiter.Allow(&suppressed));
  EXPECT_EQ(LogLimiter::Suppressed(0), "");
  EXPECT_EQ(LogLimiter::Suppressed(5), " (and 5 more since the last report)");

  LogLimiter immediate(absl::ZeroDuration());
  EXPECT_TRUE(immediate.Allow(&suppressed));
  EXPECT_TRUE(immediate.Allow(&suppressed));
  EXPECT_EQ(suppressed, 0u);
}

}  // namespace
}  // namespace lazyram
