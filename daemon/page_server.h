// PageServer: `lazyramd serve`. Serves files read-only as regions over the
// page protocol to many clients at once, from one thread that owns an
// io_uring for accept, recv, send and file reads.
//
// Lifetime: Create opens the files and starts listening (connections queue
// in the kernel from then on); Run serves on the calling thread until Stop.
// Stop may be called from any thread.
#ifndef LAZYRAM_DAEMON_PAGE_SERVER_H_
#define LAZYRAM_DAEMON_PAGE_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "daemon/net_address.h"
#include "daemon/protocol.h"
#include "daemon/unique_fd.h"

namespace lazyram {

class PageServer {
 public:
  struct RegionSpec {
    std::string name;
    std::string path;
  };
  struct Options {
    NetAddress listen;
    std::vector<RegionSpec> regions;
    int max_connections = 256;
    int max_reads_per_connection = 64;  // further requests wait in the socket
  };

  // Validates names, opens every file, finds its holes (the zero extents of
  // the handshake) and listens.
  static absl::StatusOr<std::unique_ptr<PageServer>> Create(Options options);
  ~PageServer();

  // The address actually bound (the real port when asked for port 0).
  const NetAddress& address() const { return bound_; }
  const protocol::Welcome& welcome() const { return welcome_; }

  absl::Status Run();
  void Stop();

 private:
  class Loop;
  PageServer() = default;

  Options options_;
  NetAddress bound_;
  protocol::Welcome welcome_;
  std::vector<UniqueFd> files_;  // index = region index
  UniqueFd listen_fd_;
  UniqueFd wake_fd_;
};

// Checks a region name from the command line or a handshake: non-empty,
// at most 255 bytes, no '/' or NUL, not "." or "..".
absl::Status ValidateRegionName(absl::string_view name);

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_PAGE_SERVER_H_
