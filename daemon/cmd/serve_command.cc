// `lazyramd serve`: parse NAME=PATH pairs, listen, announce the real
// address on stdout, serve until SIGINT/SIGTERM.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "daemon/base/log.h"
#include "daemon/cmd/commands.h"
#include "daemon/protocol/auth_key.h"
#include "daemon/server/page_server.h"

namespace lazyram {

void PrintError(absl::string_view message) {
  std::fprintf(stderr, "lazyramd: %.*s\n", static_cast<int>(message.size()), message.data());
}

int RunServe(const ServeOptions& options) {
  PageServer::Options server_options;
  absl::StatusOr<NetAddress> listen = NetAddress::Parse(options.listen, /*allow_port_zero=*/true);
  if (!listen.ok()) {
    PrintError(listen.status().message());
    return 1;
  }
  server_options.listen = *listen;
  for (const std::string& spec : options.regions) {
    const size_t eq = spec.find('=');
    if (eq == std::string::npos || eq + 1 == spec.size()) {
      PrintError(absl::StrCat("bad --region '", spec, "': expected NAME=PATH"));
      return 1;
    }
    server_options.regions.push_back({spec.substr(0, eq), spec.substr(eq + 1)});
  }
  if (options.auth_key_file.has_value()) {
    absl::StatusOr<std::shared_ptr<const AuthKey>> key = AuthKey::LoadFile(*options.auth_key_file);
    if (!key.ok()) {
      PrintError(key.status().message());
      return 1;
    }
    server_options.auth_key = *std::move(key);
  }
  server_options.insecure = options.insecure;
  server_options.max_connections = options.max_connections;
  server_options.max_reads_per_connection = options.max_inflight;
  server_options.handshake_timeout = absl::Seconds(options.handshake_timeout_seconds);

  // Signals are taken by one thread with sigwait; every other thread,
  // created after this, inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<PageServer>> server =
      PageServer::Create(std::move(server_options));
  if (!server.ok()) {
    PrintError(server.status().message());
    return 1;
  }
  std::printf("listening on %s\n", (*server)->address().ToString().c_str());
  std::fflush(stdout);

  PageServer* s = server->get();
  std::thread signal_thread([s, signals] {
    int sig = 0;
    sigwait(&signals, &sig);
    LogInfo("signal %d: shutting down", sig);
    s->Stop();
  });
  absl::Status status = s->Run();
  // If Run failed on its own, the signal thread is still waiting: wake it.
  pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  if (!status.ok()) {
    PrintError(status.message());
    return 1;
  }
  return 0;
}

}  // namespace lazyram
