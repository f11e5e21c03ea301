// LogLimiter: at most one log line per interval for one kind of event, so
// that a flood of misbehaving peers cannot flood the log; the next line says
// how many were left out. Not thread-safe: one owner thread.
#ifndef LAZYRAM_DAEMON_BASE_LOG_LIMITER_H_
#define LAZYRAM_DAEMON_BASE_LOG_LIMITER_H_

#include <cstdint>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace lazyram {

class LogLimiter {
 public:
  explicit LogLimiter(absl::Duration interval) : interval_(interval) {}

  // True when a line may be written now; `*suppressed` gets the number of
  // events left out since the last line.
  bool Allow(uint64_t* suppressed) {
    const absl::Time now = absl::Now();
    if (now < next_) {
      ++suppressed_;
      return false;
    }
    next_ = now + interval_;
    *suppressed = std::exchange(suppressed_, 0);
    return true;
  }

  // " (and N more since the last report)", or "" for none: the tail of a
  // line written after Allow.
  static std::string Suppressed(uint64_t n) {
    return n == 0 ? "" : absl::StrCat(" (and ", n, " more since the last report)");
  }

 private:
  const absl::Duration interval_;
  absl::Time next_ = absl::InfinitePast();
  uint64_t suppressed_ = 0;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_BASE_LOG_LIMITER_H_
