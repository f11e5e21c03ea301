#include "daemon/fetch/source_url.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace lazyram {
namespace {

constexpr absl::string_view kFileScheme = "file://";
constexpr absl::string_view kStreamScheme = "qemu-stream://";

}  // namespace

absl::StatusOr<SourceUrl> SourceUrl::Parse(absl::string_view url) {
  SourceUrl out;
  for (const auto& [scheme, kind] :
       {std::pair{kFileScheme, Kind::kFile}, std::pair{kStreamScheme, Kind::kQemuStream}}) {
    if (!absl::StartsWith(url, scheme)) continue;
    out.kind = kind;
    out.path = std::string(url.substr(scheme.size()));
    if (out.path.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad source '", url, "': no path after ", scheme));
    }
    return out;
  }
  if (!absl::StartsWith(url, "tcp://")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad source '", url, "': expected tcp://HOST:PORT, file://PATH or qemu-stream://PATH"));
  }
  absl::StatusOr<NetAddress> address = NetAddress::ParseUrl(url);
  if (!address.ok()) return address.status();
  out.address = *std::move(address);
  return out;
}

std::string SourceUrl::ToString() const {
  switch (kind) {
    case Kind::kTcp:
      return absl::StrCat("tcp://", address.ToString());
    case Kind::kFile:
      return absl::StrCat(kFileScheme, path);
    case Kind::kQemuStream:
      return absl::StrCat(kStreamScheme, path);
  }
  return "";
}

}  // namespace lazyram
