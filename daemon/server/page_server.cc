#include "daemon/server/page_server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <list>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "daemon/base/errno_status.h"
#include "daemon/base/event_fd.h"
#include "daemon/base/log.h"
#include "daemon/protocol/region_name.h"
#include "daemon/server/server_loop.h"

namespace lazyram {

using protocol::FrameType;
using protocol::kPageSize;

namespace {

// Page-aligned holes of `fd`, as zero extents, appended to `out` while the
// overall budget lasts.
void FindHoles(int fd, uint64_t size, std::vector<protocol::ZeroExtent>* out, size_t* budget) {
  off_t pos = 0;
  while (static_cast<uint64_t>(pos) < size && *budget > 0) {
    off_t hole = lseek(fd, pos, SEEK_HOLE);
    if (hole < 0 || static_cast<uint64_t>(hole) >= size) break;
    off_t data = lseek(fd, hole, SEEK_DATA);
    const uint64_t end = data < 0 ? size : static_cast<uint64_t>(data);
    const uint64_t first = (static_cast<uint64_t>(hole) + kPageSize - 1) / kPageSize;
    // A hole that runs to the end of the file covers the partial last page.
    const uint64_t last = end >= size ? (size + kPageSize - 1) / kPageSize : end / kPageSize;
    if (last > first) {
      out->push_back({first, last - first});
      --*budget;
    }
    if (data < 0) break;
    pos = data;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<PageServer>> PageServer::Create(Options options) {
  if (options.regions.empty()) {
    return absl::InvalidArgumentError("no region to serve: give at least one --region NAME=PATH");
  }
  if (options.max_connections < 1 || options.max_reads_per_connection < 1 ||
      options.handshake_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "connection limits, in-flight limits and the handshake timeout must be positive");
  }
  if (options.auth_key == nullptr && !options.insecure) {
    absl::StatusOr<bool> loopback = IsLoopback(options.listen);
    if (!loopback.ok()) return loopback.status();
    if (!*loopback) {
      return absl::FailedPreconditionError(absl::StrCat(
          "refusing to serve ", options.listen.ToString(),
          " without authentication: it is not a loopback address, so anyone who can reach it "
          "could read the guest's memory; give --auth-key-file FILE (or --insecure)"));
    }
  }
  std::unique_ptr<PageServer> server(new PageServer);
  absl::flat_hash_set<std::string> names;
  size_t budget = protocol::kMaxZeroExtents;
  for (const RegionSpec& spec : options.regions) {
    if (absl::Status s = ValidateRegionName(spec.name); !s.ok()) return s;
    if (!names.insert(spec.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("region name '", spec.name, "' is used twice"));
    }
    UniqueFd fd(open(spec.path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return ErrnoStatus(errno, absl::StrCat("cannot open image ", spec.path));
    struct stat st;
    if (fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", spec.path));
    if (!S_ISREG(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("image ", spec.path, " is not a regular file"));
    }
    if (st.st_size == 0) {
      return absl::InvalidArgumentError(absl::StrCat("image ", spec.path, " is empty"));
    }
    protocol::RegionInfo info{spec.name, static_cast<uint64_t>(st.st_size), {}};
    FindHoles(fd.get(), info.size, &info.zero_extents, &budget);
    server->welcome_.regions.push_back(std::move(info));
    server->files_.push_back(std::move(fd));
  }
  absl::StatusOr<UniqueFd> listen_fd = ListenTcp(options.listen, &server->bound_);
  if (!listen_fd.ok()) return listen_fd.status();
  server->listen_fd_ = *std::move(listen_fd);
  server->options_ = std::move(options);
  server->context_ = std::make_unique<ServeContext>();
  server->context_->options = &server->options_;
  server->context_->welcome = &server->welcome_;
  server->context_->files = &server->files_;
  server->context_->listen_fd = server->listen_fd_.get();
  absl::StatusOr<EventFd> demand_wake = EventFd::Create();
  if (!demand_wake.ok()) return demand_wake.status();
  absl::StatusOr<EventFd> main_wake = EventFd::Create();
  if (!main_wake.ok()) return main_wake.status();
  server->demand_loop_ = std::make_unique<ServerLoop>(
      ServerLoop::Role::kDemand, server->context_.get(), nullptr, *std::move(demand_wake));
  server->main_loop_ =
      std::make_unique<ServerLoop>(ServerLoop::Role::kMain, server->context_.get(),
                                   server->demand_loop_.get(), *std::move(main_wake));
  return server;
}

PageServer::PageServer() = default;
PageServer::~PageServer() = default;

absl::Status PageServer::Run() {
  absl::Status demand_status;
  std::thread demand([this, &demand_status] {
    pthread_setname_np(pthread_self(), "lazyram-serve-d");
    demand_status = demand_loop_->Run();
  });
  absl::Status status = main_loop_->Run();
  demand_loop_->Stop();
  demand.join();
  return status.ok() ? demand_status : status;
}

int PageServer::demand_connections() const { return context_->handed_off.load(); }

void PageServer::Stop() {
  main_loop_->Stop();
  demand_loop_->Stop();
}

}  // namespace lazyram
