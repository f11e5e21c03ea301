// The one place errno becomes an absl::Status. Everything that calls the OS
// in daemon/ reports failure through ErrnoStatus.
#ifndef LAZYRAM_DAEMON_BASE_ERRNO_STATUS_H_
#define LAZYRAM_DAEMON_BASE_ERRNO_STATUS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace lazyram {

// Maps `err` (an errno value) to a canonical code and formats
// "<context>: <strerror>". ENOENT -> kNotFound, EACCES/EPERM ->
// kPermissionDenied, EINVAL -> kInvalidArgument, ECONNREFUSED/ECONNRESET/
// EPIPE/ETIMEDOUT/EHOSTUNREACH/ENETUNREACH -> kUnavailable, ENOSPC/ENOMEM ->
// kResourceExhausted, EEXIST -> kAlreadyExists, else kInternal.
absl::Status ErrnoStatus(int err, absl::string_view context);

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_BASE_ERRNO_STATUS_H_
