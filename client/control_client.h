// ControlClient speaks lazyramd's control protocol: the client connects to
// the daemon's Unix stream socket (lazyramd --control PATH), writes one JSON
// object followed by '\n', reads one JSON object followed by '\n', and the
// daemon closes the connection. Every reply carries a boolean "ok"; a failed
// request answers {"ok":false,"code":"<absl code name>","error":"<message>"}.
//
// Stateless: each Call opens and closes its own connection, so Call is safe
// from any thread.
#ifndef LAZYRAM_CLIENT_CONTROL_CLIENT_H_
#define LAZYRAM_CLIENT_CONTROL_CLIENT_H_

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace lazyram::client {

class ControlClient {
 public:
  // The daemon rejects longer requests; the limit counts the trailing '\n'.
  static constexpr size_t kMaxRequestBytes = 64 * 1024;
  // A reply past this size means a broken daemon, not a big status: even
  // thousands of regions stay far below it.
  static constexpr size_t kMaxReplyBytes = 16 * 1024 * 1024;

  ControlClient() = delete;

  // Sends `request` to the daemon at `socket_path` and returns its reply
  // object (with "ok":true still in it). `timeout` bounds the whole exchange,
  // connect included; the default waits for as long as the daemon works,
  // which "prefetch" and "unmount" need.
  //
  // Errors:
  //   kNotFound / kUnavailable  socket missing, or nobody listening on it,
  //                             or the daemon hung up before replying
  //   kDeadlineExceeded         no complete reply within `timeout`
  //   kInvalidArgument          bad socket path or oversized request
  //   kInternal                 the reply was not the protocol's JSON object
  //   any code the daemon sent  the daemon answered "ok":false; the Status
  //                             carries the daemon's code and message
  static absl::StatusOr<nlohmann::json> Call(std::string_view socket_path,
                                             const nlohmann::json& request,
                                             absl::Duration timeout = absl::InfiniteDuration());
};

}  // namespace lazyram::client

#endif  // LAZYRAM_CLIENT_CONTROL_CLIENT_H_
