// Engine: the wiring of one mount, without the kernel side. It builds the
// regions and their stores (with --store DIR also their state files and the
// store's lock; docs/store.md), the source (a Fetcher for a page server, a
// LocalPageSource for file:// and qemu-stream://), the puller, the hasher,
// the forensic views and the control requests (MountControl), and it owns
// them all. fusefs/ sees it as a RegionSet; docs/architecture.md has the map.
//
// Thread-safety: all methods may be called from any thread. Region objects
// are never destroyed while the engine lives (an unlinked region is only
// retired), so Region pointers stay valid.
#ifndef LAZYRAM_DAEMON_ENGINE_ENGINE_H_
#define LAZYRAM_DAEMON_ENGINE_ENGINE_H_

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/control/mount_control.h"
#include "daemon/control/status_sections.h"
#include "daemon/core/puller.h"
#include "daemon/core/region.h"
#include "daemon/core/region_hasher.h"
#include "daemon/core/region_set.h"
#include "daemon/fetch/fetcher.h"
#include "daemon/fetch/source_url.h"
#include "daemon/forensics/forensic_views.h"
#include "daemon/forensics/guest_layout.h"
#include "daemon/local/local_page_source.h"
#include "daemon/store/store_dir.h"

namespace lazyram {

class Engine : public RegionSet {
 public:
  struct Options {
    // A page server: fetch.addresses holds it, then its replicas in order of
    // preference. Empty (and no local_source): an empty RAM-backing
    // filesystem.
    Fetcher::Options fetch;
    Puller::Options pull;
    // file:// or qemu-stream://: regions read from local files by a
    // LocalPageSource (fetch.addresses is then empty).
    std::optional<SourceUrl> local_source;
    std::string store_dir;  // empty: one memfd per region
    bool prefetch = true;
    uint64_t max_region_size = uint64_t{16} << 40;  // for regions without a source
    // Forensics (docs/forensics.md): the mount refuses every write, and
    // views/ appears when this is set, when `machine` is, or with a local
    // source.
    bool read_only = false;
    std::optional<MachineType> machine;
    // With store_dir: how often the store's bytes and page states are made
    // durable (docs/store.md); zero: only at a clean shutdown.
    absl::Duration checkpoint_interval = absl::Seconds(30);
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
  // The views/ folder's content; null when the mount has none.
  const ForensicViews* views() const { return views_.get(); }
  RegionHasher& hasher() { return hasher_; }
  // The control socket's requests (status, prefetch, hash, unmount).
  MountControl* control() { return control_.get(); }
  // Where other layers add to the status reply.
  StatusSections* status_sections() { return &status_sections_; }

  // RegionSet.
  size_t region_count() const override;
  Region* region(size_t index) const override;
  std::optional<size_t> FindRegion(absl::string_view name) const override;
  absl::StatusOr<size_t> CreateRegion(absl::string_view name) override;
  absl::StatusOr<size_t> UnlinkRegion(absl::string_view name) override;
  absl::StatusOr<std::optional<size_t>> RenameRegion(absl::string_view from, absl::string_view to,
                                                     bool noreplace) override;
  void ReleaseRegion(size_t index) override;
  bool read_only() const override { return options_.read_only; }
  bool memory_store() const override { return options_.store_dir.empty(); }

 private:
  explicit Engine(Options options) : options_(std::move(options)) {}
  // A region with its store (with --store DIR also its state file,
  // resumed or created: StoreDir::Attach).
  absl::StatusOr<std::unique_ptr<Region>> BuildRegion(Region::Options ro);
  absl::Status AttachPageServer();
  absl::Status AttachLocalSource();
  // A mount without a source on a store directory: the files it holds.
  absl::Status RestoreSourcelessRegions();
  // A mount with a source on a store directory: the regions created in it.
  absl::Status RestoreLocalRegions();
  absl::StatusOr<size_t> UnlinkHeld(absl::string_view name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(namespace_mu_);
  std::optional<size_t> FindLocked(absl::string_view name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // With --store DIR on a mount with a source: a name the source's table
  // has is kept for that region's files.
  absl::Status CheckFreeStoreName(absl::string_view name) const;
  void CheckpointLoop();
  void StopCheckpoints();
  void OnPullComplete();

  const Options options_;
  std::unique_ptr<StoreDir> store_dir_;  // null with memory stores
  // Member order is teardown order in reverse: the puller goes before the
  // fetcher it uses, both before the regions they write into.
  // Serializes namespace changes (create, unlink, rename) with their store
  // work (file creation, renames, directory fsyncs), which runs without
  // mu_: mu_ is taken by every FUSE request. Lock order: namespace_mu_ ->
  // mu_.
  absl::Mutex namespace_mu_;
  std::vector<std::string> source_names_;  // the source's table, set at start
  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Region>> regions_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Fetcher> fetcher_;
  std::unique_ptr<LocalPageSource> local_source_;
  std::unique_ptr<Puller> puller_;
  // Reads regions through the source: stopped before it (in Shutdown).
  RegionHasher hasher_;
  std::unique_ptr<ForensicViews> views_;
  StatusSections status_sections_;
  std::unique_ptr<MountControl> control_;  // uses everything above
  absl::Mutex checkpoint_mu_;
  bool checkpoint_stop_ ABSL_GUARDED_BY(checkpoint_mu_) = false;
  std::thread checkpoint_thread_;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_ENGINE_ENGINE_H_
