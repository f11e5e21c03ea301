// FileSource: the PageLocator of `--source file://PATH`. PATH is one raw
// RAM file (one region, named after the file) or a directory (one region
// per non-empty regular file in it, in name order). Page p of a region is
// bytes [p * 4096, p * 4096 + 4096) of its file; holes (SEEK_HOLE) are
// known zero from the start, so they are never read.
//
// Owns the open descriptors (read-only: the files are never written).
// Immutable once opened; thread-safe.
#ifndef LAZYRAM_DAEMON_LOCAL_FILE_SOURCE_H_
#define LAZYRAM_DAEMON_LOCAL_FILE_SOURCE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "daemon/base/unique_fd.h"
#include "daemon/local/page_locator.h"

namespace lazyram {

class FileSource : public PageLocator {
 public:
  static absl::StatusOr<std::unique_ptr<FileSource>> Open(absl::string_view path);

  const std::vector<protocol::RegionInfo>& regions() const override { return regions_; }
  PageLocation Locate(uint32_t region, uint64_t page) const override;
  std::string Describe() const override { return "file://" + path_; }

 private:
  explicit FileSource(std::string path) : path_(std::move(path)) {}
  absl::Status Add(std::string name, const std::string& file, bool must_be_usable);

  const std::string path_;
  std::vector<protocol::RegionInfo> regions_;
  std::vector<UniqueFd> files_;  // index = region index
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_LOCAL_FILE_SOURCE_H_
