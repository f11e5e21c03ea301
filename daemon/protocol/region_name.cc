#include "daemon/protocol/region_name.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "daemon/protocol/protocol.h"

namespace lazyram {

absl::string_view RegionNameProblem(absl::string_view name) {
  if (name.empty()) return "is empty";
  if (name.size() > protocol::kMaxRegionName) return "is longer than 255 bytes";
  if (name == "." || name == "..") return "is a dot entry";
  if (name.find('/') != absl::string_view::npos) return "contains '/'";
  if (name.find('\0') != absl::string_view::npos) return "contains NUL";
  return {};
}

absl::Status ValidateRegionName(absl::string_view name) {
  absl::string_view problem = RegionNameProblem(name);
  if (problem.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("bad region name \"", absl::CHexEscape(name),
                                                 "\": it ", problem,
                                                 " (a region name is a file name)"));
}

}  // namespace lazyram
