#include "fusefs/bdi_tuning.h"

#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace lazyram::fusefs {
namespace {

// mountinfo escapes spaces and a few other bytes as \ooo.
std::string Unescape(const std::string& field) {
  std::string out;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size()) {
      out += static_cast<char>(std::stoi(field.substr(i + 1, 3), nullptr, 8));
      i += 3;
    } else {
      out += field[i];
    }
  }
  return out;
}

absl::Status WriteSysfs(const std::string& path, const std::string& value) {
  std::ofstream f(path);
  f << value;
  f.close();
  if (!f) return absl::UnavailableError(absl::StrCat("cannot write ", value, " to ", path));
  return absl::OkStatus();
}

}  // namespace

std::string MountDevice(const std::string& mountpoint) {
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line, device;
  while (std::getline(mountinfo, line)) {
    std::vector<std::string> fields = absl::StrSplit(line, ' ');
    if (fields.size() > 4 && Unescape(fields[4]) == mountpoint) device = fields[2];
  }
  return device;
}

absl::Status RaiseWritebackLimits(const std::string& mountpoint) {
  const std::string device = MountDevice(mountpoint);
  if (device.empty()) {
    return absl::NotFoundError(absl::StrCat("no mount at ", mountpoint, " in mountinfo"));
  }
  const std::string bdi = absl::StrCat("/sys/class/bdi/", device);
  absl::Status status = WriteSysfs(bdi + "/max_ratio", "100");
  absl::Status strict = WriteSysfs(bdi + "/strict_limit", "0");
  return status.ok() ? strict : status;
}

}  // namespace lazyram::fusefs
