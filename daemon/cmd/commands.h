// The `lazyramd` subcommands. Each parses nothing itself: main.cc owns the
// command line and hands over validated options.
#ifndef LAZYRAM_DAEMON_CMD_COMMANDS_H_
#define LAZYRAM_DAEMON_CMD_COMMANDS_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "daemon/core/puller.h"
#include "daemon/engine/engine.h"
#include "daemon/fetch/fetcher.h"
#include "daemon/server/page_server.h"

namespace lazyram {

struct ServeOptions {
  std::string listen;
  std::vector<std::string> regions;  // NAME=PATH
  std::optional<std::string> auth_key_file;
  bool insecure = false;
  int max_connections = PageServer::Options{}.max_connections;
  int max_inflight = PageServer::Options{}.max_reads_per_connection;
  double handshake_timeout_seconds = absl::ToDoubleSeconds(PageServer::Options{}.handshake_timeout);
};

struct MountOptions {
  std::string mountpoint;
  std::optional<std::string> source;    // tcp://HOST:PORT, file://PATH, qemu-stream://PATH
  std::vector<std::string> replicas;    // the further --source values: tcp:// only
  std::optional<double> fetch_timeout;  // seconds; none: demand fetches wait forever
  uint64_t max_fetch_memory_mib = Fetcher::Options{}.max_memory >> 20;
  std::string store = "mem";  // "mem" or a directory
  std::optional<std::string> control;
  std::optional<std::string> log;
  std::string prefetch = "on";
  bool prefetch_given = false;  // --prefetch was on the command line
  bool read_only = false;
  std::optional<std::string> machine;  // "pc" or "q35"
  bool foreground = false;
  bool allow_other = false;
  // Seconds; 0: only at a clean shutdown.
  double checkpoint_interval = absl::ToDoubleSeconds(Engine::Options{}.checkpoint_interval);
  // The pull yields for this long after a fault; 0: never.
  double pull_yield_ms = absl::ToDoubleMilliseconds(Puller::Options{}.fault_quiet);
  std::optional<std::string> auth_key_file;
  std::string push = "on";         // push pulled pages into the page cache
  std::string passthrough = "on";  // complete regions open in FUSE passthrough mode
};

// Both return the process exit code; errors are printed as one line.
int RunServe(const ServeOptions& options);
int RunMount(const MountOptions& options);

// "lazyramd: <message>" on stderr.
void PrintError(absl::string_view message);

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_CMD_COMMANDS_H_
