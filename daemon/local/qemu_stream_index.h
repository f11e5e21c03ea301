// QemuStreamIndex: the PageLocator of `--source qemu-stream://PATH`. At
// open it reads a QEMU 7.2 migration stream (`migrate "exec:cat > FILE"`,
// or a raw `virsh save` image) once, front to back, and records for every
// page of every RAMBlock where its last copy lies: the stream offset of its
// 4096 bytes, or "zero" (a zero record, or never sent). Pages are then read
// on demand by LocalPageSource. The format is in qemu_stream_format.h.
//
// What it cannot index is an error at open, with the reason in one line:
// a stream that is not QEMU's, truncated, or corrupt; XBZRLE, compressed or
// RDMA pages; other iterative sections (block migration, dirty bitmaps); a
// stream made with x-ignore-shared (its shared blocks are not in it).
// Indexing stops at the first device section after the RAM section's END
// (device sections carry no length); the stream must then end as QEMU 7.2
// ends it: the end marker and the JSON device description (so a machine
// run with suppress-vmdesc=on gives streams that cannot be checked, and are
// refused as truncated).
//
// Region names are the RAMBlock names with '%' and '/' escaped as %25 and
// %2F ("/rom@etc/acpi/tables" -> "%2From@etc%2Facpi%2Ftables").
//
// Memory: 8 bytes per page of RAM (8 MiB per 4 GiB). Immutable once
// opened; thread-safe.
#ifndef LAZYRAM_DAEMON_LOCAL_QEMU_STREAM_INDEX_H_
#define LAZYRAM_DAEMON_LOCAL_QEMU_STREAM_INDEX_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "daemon/base/unique_fd.h"
#include "daemon/local/page_locator.h"
#include "daemon/local/qemu_stream_devices.h"

namespace lazyram {

class QemuStreamIndex : public PageLocator {
 public:
  struct Stats {
    uint64_t stream_bytes = 0;   // the file's size
    uint64_t indexed_bytes = 0;  // how far indexing read
    uint64_t data_records = 0;   // page records with data (re-sent pages included)
    uint64_t zero_records = 0;
  };

  // A stream whose RAM would need more than `max_index_bytes` of index is
  // refused with kResourceExhausted before anything is allocated (the
  // default: the machine's physical memory).
  static absl::StatusOr<std::unique_ptr<QemuStreamIndex>> Open(
      absl::string_view path, uint64_t max_index_bytes = DefaultMaxIndexBytes());
  static uint64_t DefaultMaxIndexBytes();

  const std::vector<protocol::RegionInfo>& regions() const override { return regions_; }
  PageLocation Locate(uint32_t region, uint64_t page) const override;
  std::string Describe() const override { return "qemu-stream://" + path_; }

  // The machine type the stream records ("pc-i440fx-7.2"); may be empty.
  const std::string& machine_name() const { return machine_name_; }
  // The RAMBlock names, unescaped, in region order.
  const std::vector<std::string>& block_names() const { return block_names_; }
  const Stats& stats() const { return stats_; }
  // The vCPUs' registers and the vmcoreinfo device's note address, read
  // from the device sections with the stream's device description; an
  // error (not fatal to the mount) when they could not be walked.
  const absl::StatusOr<StreamDevices>& devices() const { return devices_; }

  // The region name for a RAMBlock name (see above).
  static std::string RegionNameFor(absl::string_view block);

 private:
  class Parser;
  explicit QemuStreamIndex(std::string path) : path_(std::move(path)) {}

  // An entry per page: 0 = zero, kFillBit | byte = filled with a nonzero
  // byte, else the stream offset of the page's bytes (never 0: the stream
  // header comes first).
  static constexpr uint64_t kFillBit = uint64_t{1} << 63;

  const std::string path_;
  uint64_t max_index_bytes_ = 0;
  UniqueFd fd_;
  std::string machine_name_;
  std::vector<std::string> block_names_;
  std::vector<protocol::RegionInfo> regions_;
  std::vector<std::vector<uint64_t>> pages_;  // [region][page]
  Stats stats_;
  absl::StatusOr<StreamDevices> devices_ =
      absl::NotFoundError("the stream's device state was not read");
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_LOCAL_QEMU_STREAM_INDEX_H_
