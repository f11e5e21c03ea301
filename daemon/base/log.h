// Minimal logging: one line per event on stderr, with time and severity.
// A daemon that runs in the background points stderr at its log file.
// Thread-safe (one write(2) per line).
#ifndef LAZYRAM_DAEMON_BASE_LOG_H_
#define LAZYRAM_DAEMON_BASE_LOG_H_

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace lazyram {

void LogLine(absl::string_view severity, absl::string_view message);

template <typename... Args>
void LogInfo(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogLine("info", absl::StrFormat(format, args...));
}
template <typename... Args>
void LogWarning(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogLine("warning", absl::StrFormat(format, args...));
}
template <typename... Args>
void LogError(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogLine("error", absl::StrFormat(format, args...));
}

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_BASE_LOG_H_
