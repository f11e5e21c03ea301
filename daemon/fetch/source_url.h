// SourceUrl: a parsed `--source`: a page server (tcp://HOST:PORT), raw RAM
// files (file://PATH: one file or a directory of them), or a QEMU migration
// stream (qemu-stream://PATH). PATH is everything after "//": file:///x is
// the absolute path /x, file://x a relative one.
#ifndef LAZYRAM_DAEMON_FETCH_SOURCE_URL_H_
#define LAZYRAM_DAEMON_FETCH_SOURCE_URL_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "daemon/base/net_address.h"

namespace lazyram {

struct SourceUrl {
  enum class Kind { kTcp, kFile, kQemuStream };
  Kind kind = Kind::kTcp;
  NetAddress address;  // kTcp
  std::string path;    // kFile, kQemuStream

  static absl::StatusOr<SourceUrl> Parse(absl::string_view url);
  bool is_local() const { return kind != Kind::kTcp; }
  std::string ToString() const;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_FETCH_SOURCE_URL_H_
