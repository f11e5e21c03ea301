#include "tools/bench/host_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "tools/bench/bench_util.h"

namespace lazyram::bench {
namespace {

// "Key:   1234 kB" lines of a /proc file, in bytes.
std::map<std::string, uint64_t> ReadKiBFields(const std::string& path) {
  std::ifstream in(path);
  if (!in) Fail("cannot read " + path);
  std::map<std::string, uint64_t> fields;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string key, unit;
    uint64_t value = 0;
    if (words >> key >> value >> unit && unit == "kB" && key.back() == ':') {
      fields[key.substr(0, key.size() - 1)] = value * 1024;
    }
  }
  return fields;
}

uint64_t Field(const std::map<std::string, uint64_t>& fields, const std::string& key,
               const std::string& path) {
  const auto it = fields.find(key);
  if (it == fields.end()) Fail("no " + key + " in " + path);
  return it->second;
}

uint64_t ResidentBytesOf(int fd, const std::string& path) {
  struct stat st;
  if (fstat(fd, &st) != 0) FailErrno("stat " + path);
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size == 0) return 0;
  void* p = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) FailErrno("mmap " + path);
  const absl::Cleanup unmap = [p, size] { munmap(p, size); };
  std::vector<unsigned char> pages((size + kPage - 1) / kPage);
  if (mincore(p, size, pages.data()) != 0) FailErrno("mincore " + path);
  const auto resident =
      std::count_if(pages.begin(), pages.end(), [](unsigned char v) { return (v & 1) != 0; });
  return kPage * static_cast<uint64_t>(resident);
}

}  // namespace

HostMemory HostMemory::Read() {
  const std::string path = "/proc/meminfo";
  const auto f = ReadKiBFields(path);
  return {.total = Field(f, "MemTotal", path),
          .free = Field(f, "MemFree", path),
          .available = Field(f, "MemAvailable", path),
          .cached = Field(f, "Cached", path),
          .shmem = Field(f, "Shmem", path)};
}

ProcessMemory ProcessMemory::Read(pid_t pid) {
  const std::string path = "/proc/" + std::to_string(pid) + "/status";
  const auto f = ReadKiBFields(path);
  return {.rss = Field(f, "VmRSS", path),
          .rss_anon = Field(f, "RssAnon", path),
          .rss_file = Field(f, "RssFile", path),
          .rss_shmem = Field(f, "RssShmem", path)};
}

uint64_t ResidentBytes(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) FailErrno("open " + path);
  const absl::Cleanup close_fd = [fd] { close(fd); };
  return ResidentBytesOf(fd, path);
}

uint64_t OpenFilesResidentBytes(pid_t pid) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  std::set<std::pair<dev_t, ino_t>> seen;
  uint64_t total = 0;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    // An fd closed meanwhile is skipped, not an error.
    const int fd = open(entry.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    const absl::Cleanup close_fd = [fd] { close(fd); };
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (seen.insert({st.st_dev, st.st_ino}).second) total += ResidentBytesOf(fd, entry.path());
  }
  if (error) Fail("listing " + dir + ": " + error.message());
  return total;
}

}  // namespace lazyram::bench
