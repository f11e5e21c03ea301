// The one place a Status becomes an errno: at the FUSE edge.
#ifndef LAZYRAM_FUSEFS_STATUS_ERRNO_H_
#define LAZYRAM_FUSEFS_STATUS_ERRNO_H_

#include "absl/status/status.h"

namespace lazyram::fusefs {

// kNotFound -> ENOENT, kPermissionDenied -> EPERM, kInvalidArgument ->
// EINVAL, kOutOfRange -> EFBIG, kAlreadyExists -> EEXIST,
// kResourceExhausted -> ENOSPC, kUnimplemented -> EOPNOTSUPP, kDeadlineExceeded
// -> ETIMEDOUT, anything else -> EIO. OK -> 0.
int StatusToErrno(const absl::Status& status);

}  // namespace lazyram::fusefs

#endif  // LAZYRAM_FUSEFS_STATUS_ERRNO_H_
