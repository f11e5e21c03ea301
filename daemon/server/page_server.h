// PageServer: `lazyramd serve`. Serves files read-only as regions over the
// page protocol to many clients at once, from one thread that owns an
// io_uring for accept, recv, send and file reads.
//
// Lifetime: Create opens the files and starts listening (connections queue
// in the kernel from then on); Run serves on the calling thread until Stop.
// Stop may be called from any thread.
//
// Limits, so that no peer can exhaust the server: at most max_connections
// connections (one more gets ERROR BUSY and is closed); per connection at
// most max_reads_per_connection READs being read or replied to (further
// requests wait in the socket); a connection that has not completed the
// handshake (authentication included) within handshake_timeout is dropped.
// Memory for replies is therefore bounded by max_connections x
// max_reads_per_connection x 1 MiB.
#ifndef LAZYRAM_DAEMON_SERVER_PAGE_SERVER_H_
#define LAZYRAM_DAEMON_SERVER_PAGE_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "daemon/base/net_address.h"
#include "daemon/base/unique_fd.h"
#include "daemon/protocol/auth_key.h"
#include "daemon/protocol/protocol.h"

namespace lazyram {

class ServerLoop;
struct ServeContext;

class PageServer {
 public:
  struct RegionSpec {
    std::string name;
    std::string path;
  };
  struct Options {
    NetAddress listen;
    std::vector<RegionSpec> regions;
    // The shared key (--auth-key-file): a client must prove it before it
    // sees the region table. Null: anyone who can connect is served, which
    // Create allows only on a loopback address unless `insecure`.
    std::shared_ptr<const AuthKey> auth_key;
    bool insecure = false;
    int max_connections = 64;
    int max_reads_per_connection = 64;  // READs being read + replies queued
    absl::Duration handshake_timeout = absl::Seconds(10);
  };

  // Validates names and limits, opens every file, finds its holes (the
  // zero extents of the handshake) and listens. Refuses (kFailedPrecondition)
  // a non-loopback listen address without auth_key unless insecure.
  static absl::StatusOr<std::unique_ptr<PageServer>> Create(Options options);
  ~PageServer();

  // The address actually bound (the real port when asked for port 0).
  const NetAddress& address() const { return bound_; }
  const protocol::Welcome& welcome() const { return welcome_; }

  absl::Status Run();
  void Stop();

  // Connections the demand loop serves now (their HELLO carried
  // kFeatureDemandChannel).
  int demand_connections() const;

 private:
  PageServer();

  Options options_;
  NetAddress bound_;
  protocol::Welcome welcome_;
  std::vector<UniqueFd> files_;  // index = region index
  UniqueFd listen_fd_;
  // The two serving loops (server_loop.h) and what they share; last, so
  // that they go before what they point into.
  std::unique_ptr<ServeContext> context_;
  std::unique_ptr<ServerLoop> demand_loop_;
  std::unique_ptr<ServerLoop> main_loop_;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_SERVER_PAGE_SERVER_H_
