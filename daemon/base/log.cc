#include "daemon/base/log.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace lazyram {

void LogLine(absl::string_view severity, absl::string_view message) {
  std::string line =
      absl::StrCat(absl::FormatTime("%Y-%m-%dT%H:%M:%E3S", absl::Now(), absl::UTCTimeZone()),
                   " lazyramd[", getpid(), "] ", severity, ": ", message, "\n");
  // A log line is best effort; there is nowhere to report a failed write.
  [[maybe_unused]] ssize_t n = write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace lazyram
