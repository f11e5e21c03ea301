// MountControl: the requests a mount answers on its control socket
// (docs/control.md) — status, prefetch, hash, unmount — and the status JSON.
// It parses and checks each request, then drives the mount's parts; it owns
// none of them.
//
// Thread-safety: Handle runs on the control server's client threads, several
// at once; the parts it is given must outlive it.
#ifndef LAZYRAM_DAEMON_CONTROL_MOUNT_CONTROL_H_
#define LAZYRAM_DAEMON_CONTROL_MOUNT_CONTROL_H_

#include <cstdint>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "daemon/control/control_server.h"
#include "daemon/control/status_sections.h"
#include "daemon/core/region_hasher.h"
#include "daemon/core/region_set.h"
#include "daemon/fetch/fetcher.h"
#include "nlohmann/json.hpp"

namespace lazyram {

class MountControl : public ControlHandler {
 public:
  struct Parts {
    RegionSet* regions = nullptr;              // not null
    RegionHasher* hasher = nullptr;            // not null
    const Fetcher* fetcher = nullptr;          // null without a page server
    bool local_source = false;                 // a file:// or qemu-stream:// source
    const StatusSections* sections = nullptr;  // not null
  };

  explicit MountControl(Parts parts) : parts_(parts) {}

  // What `lazyramctl unmount` runs; none: "not mounted".
  void SetUnmountHandler(absl::AnyInvocable<absl::Status()> handler);
  nlohmann::json Handle(const nlohmann::json& request) override;
  // The "status" reply's fields.
  nlohmann::json StatusJson() const;

 private:
  // Makes [offset, offset+length) of region `name` local at demand
  // priority and waits for it; the whole region without a range.
  absl::Status Prefetch(absl::string_view name, std::optional<uint64_t> offset,
                        std::optional<uint64_t> length);
  nlohmann::json PrefetchReply(const nlohmann::json& request);
  // Starts (or joins) hashing a region; with "wait", answers once done.
  nlohmann::json HashReply(const nlohmann::json& request);

  const Parts parts_;
  absl::Mutex unmount_mu_;
  absl::AnyInvocable<absl::Status()> unmount_ ABSL_GUARDED_BY(unmount_mu_);
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_CONTROL_MOUNT_CONTROL_H_
