#include "tools/bench/process_cpu.h"

#include <dirent.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tools/bench/bench_util.h"

namespace lazyram::bench {
namespace {

// utime + stime (+ cutime + cstime) in clock ticks; false when gone.
bool ReadTicks(pid_t pid, bool with_children, uint64_t* ticks) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return false;
  // The command name may hold spaces: the fields start after its ')'.
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return false;
  std::istringstream fields(line.substr(close + 2));
  std::vector<std::string> f;
  for (std::string x; fields >> x;) f.push_back(x);
  // f[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
  if (f.size() < 15) return false;
  *ticks = std::stoull(f[11]) + std::stoull(f[12]);
  if (with_children) *ticks += std::stoull(f[13]) + std::stoull(f[14]);
  return true;
}

std::vector<pid_t> Children(pid_t pid) {
  std::vector<pid_t> out;
  const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
  DIR* dir = opendir(tasks.c_str());
  if (dir == nullptr) return out;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream in(tasks + "/" + e->d_name + "/children");
    for (pid_t child; in >> child;) out.push_back(child);
  }
  closedir(dir);
  return out;
}

uint64_t TreeTicks(pid_t pid) {
  uint64_t ticks = 0;
  if (!ReadTicks(pid, /*with_children=*/true, &ticks)) return 0;
  for (pid_t child : Children(pid)) ticks += TreeTicks(child);
  return ticks;
}

}  // namespace

double ProcessTreeCpuSeconds(pid_t pid) {
  uint64_t ticks = 0;
  if (!ReadTicks(pid, true, &ticks)) Fail("process " + std::to_string(pid) + " is gone");
  return static_cast<double>(TreeTicks(pid)) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

}  // namespace lazyram::bench
