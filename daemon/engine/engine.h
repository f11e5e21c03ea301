// Engine: everything a mount serves, without the kernel side. It owns the
// regions, their stores (with --store DIR also their state files, and the
// store's lock; docs/store.md), the fetcher (when there is a source) and the
// puller, and it answers the control socket. fusefs/ maps kernel requests
// onto its regions; daemon/ knows nothing of libfuse.
//
// Thread-safety: all methods may be called from any thread. Regions are
// never removed while the engine lives, so Region pointers stay valid.
#ifndef LAZYRAM_DAEMON_ENGINE_ENGINE_H_
#define LAZYRAM_DAEMON_ENGINE_ENGINE_H_

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/base/net_address.h"
#include "daemon/control/control_server.h"
#include "daemon/core/puller.h"
#include "daemon/core/region.h"
#include "daemon/core/region_hasher.h"
#include "daemon/fetch/fetcher.h"
#include "daemon/fetch/source_url.h"
#include "daemon/forensics/forensic_views.h"
#include "daemon/forensics/guest_layout.h"
#include "daemon/local/local_page_source.h"
#include "daemon/protocol/auth_key.h"
#include "daemon/store/store_dir.h"

namespace lazyram {

class Engine : public ControlHandler {
 public:
  struct Options {
    std::optional<NetAddress> source;  // none: an empty RAM-backing filesystem
    std::vector<NetAddress> replicas;  // more page servers with the same image as `source`
    absl::Duration fetch_timeout = absl::InfiniteDuration();  // Fetcher::Options
    uint64_t max_fetch_memory = uint64_t{64} << 20;           // Fetcher::Options
    std::string store_dir;                                    // empty: one memfd per region
    bool prefetch = true;
    int bulk_connections = 2;
    absl::Duration connect_timeout = absl::Seconds(5);
    // The shared key for the page server (--auth-key-file); null: none.
    std::shared_ptr<const AuthKey> auth_key;
    uint64_t max_region_size = uint64_t{16} << 40;  // for regions without a source
    // file:// or qemu-stream:// (then `source` is empty): regions read
    // from local files by a LocalPageSource.
    std::optional<SourceUrl> local_source;
    // Forensics (docs/forensics.md): the mount refuses every write, and
    // views/ appears when this is set, when `machine` is, or with a local
    // source.
    bool read_only = false;
    std::optional<MachineType> machine;
    // With store_dir: how often the store's bytes and page states are made
    // durable (docs/store.md); zero: only at a clean shutdown.
    absl::Duration checkpoint_interval = absl::Seconds(30);
    // Puller::Options::fault_quiet: how long the pull yields after a fault.
    absl::Duration pull_yield = Puller::Options{}.fault_quiet;
  };

  // Dials the source (failing with its error if it cannot be reached) and
  // builds one region per source region. Does not start pulling.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(Options options);
  ~Engine() override;

  // Starts the background work: the pull when prefetch is on and there is
  // a source, and with a store directory the periodic checkpoints.
  void StartPull();
  // Stops pulling and fetching; pending fetches fail. Idempotent.
  void Shutdown();
  // After the filesystem is unmounted and Shutdown: makes a --store DIR
  // durable (store bytes, then page states) and marks it clean. A no-op
  // for memory stores.
  absl::Status CloseStore();

  bool has_source() const { return fetcher_ != nullptr || local_source_ != nullptr; }
  bool read_only() const { return options_.read_only; }
  // Every region's store is a memfd (--store mem).
  bool memory_store() const { return options_.store_dir.empty(); }
  // The views/ folder's content; null when the mount has none.
  const ForensicViews* views() const { return views_.get(); }
  RegionHasher& hasher() { return hasher_; }
  size_t region_count() const;
  Region* region(size_t index) const;  // null when out of range
  std::optional<size_t> FindRegion(absl::string_view name) const;
  // A new, empty region (no-source mounts only); returns its index.
  absl::StatusOr<size_t> CreateRegion(absl::string_view name);

  // Makes [offset, offset+length) of region `name` local at demand
  // priority and waits for it; the whole region without a range.
  absl::Status Prefetch(absl::string_view name, std::optional<uint64_t> offset,
                        std::optional<uint64_t> length);
  nlohmann::json StatusJson() const;
  // The "hash" request: starts (or joins) hashing a region; with `wait`,
  // answers once it is done.
  nlohmann::json HashReply(const nlohmann::json& request);

  // Adds (or, with a null `section`, removes) a top-level key of the status
  // reply computed by another layer (fusefs's page pusher).
  void SetStatusSection(std::string key, absl::AnyInvocable<nlohmann::json() const> section);
  // Sets (or, with a null `hook`, clears) what another layer adds to each
  // region's status entry (fusefs's passthrough state), called with the
  // region's index and entry, without the engine's region lock held.
  using RegionStatusHook = absl::AnyInvocable<void(size_t index, nlohmann::json* region) const>;
  void SetRegionStatusHook(RegionStatusHook hook);

  // What `lazyramctl unmount` runs.
  void SetUnmountHandler(absl::AnyInvocable<absl::Status()> handler);
  nlohmann::json Handle(const nlohmann::json& request) override;

 private:
  explicit Engine(Options options) : options_(std::move(options)) {}
  // A region with its store (with --store DIR also its state file,
  // resumed or created: StoreDir::Attach).
  absl::StatusOr<std::unique_ptr<Region>> BuildRegion(Region::Options ro);
  // A mount without a source on a store directory: the files it holds.
  absl::Status RestoreSourcelessRegions();
  void CheckpointLoop();
  void StopCheckpoints();
  void OnPullComplete();
  absl::Status AttachLocalSource();

  const Options options_;
  std::unique_ptr<StoreDir> store_dir_;  // null with memory stores
  // Member order is teardown order in reverse: the puller goes before the
  // fetcher it uses, both before the regions they write into.
  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Region>> regions_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Fetcher> fetcher_;
  std::unique_ptr<LocalPageSource> local_source_;
  std::unique_ptr<Puller> puller_;
  // Reads regions through the source: stopped before it (in Shutdown).
  RegionHasher hasher_;
  std::unique_ptr<ForensicViews> views_;
  absl::Mutex checkpoint_mu_;
  bool checkpoint_stop_ ABSL_GUARDED_BY(checkpoint_mu_) = false;
  std::thread checkpoint_thread_;
  mutable absl::Mutex sections_mu_;
  std::vector<std::pair<std::string, absl::AnyInvocable<nlohmann::json() const>>> sections_
      ABSL_GUARDED_BY(sections_mu_);
  RegionStatusHook region_hook_ ABSL_GUARDED_BY(sections_mu_);
  absl::Mutex unmount_mu_;
  absl::AnyInvocable<absl::Status()> unmount_ ABSL_GUARDED_BY(unmount_mu_);
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_ENGINE_ENGINE_H_
