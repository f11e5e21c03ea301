#include "tools/bench/bench_util.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <unordered_set>

namespace lazyram::bench {

void Fail(const std::string& what) { throw BenchError(what); }

void FailErrno(const std::string& what) { Fail(what + ": " + std::strerror(errno)); }

void Must(const absl::Status& status, const std::string& what) {
  if (!status.ok()) Fail(what + ": " + status.ToString());
}

Latency Summarize(std::vector<double> us) {
  if (us.empty()) Fail("no latencies measured");
  std::sort(us.begin(), us.end());
  auto at = [&](double q) {
    return us[std::min(us.size() - 1, static_cast<size_t>(q * static_cast<double>(us.size())))];
  };
  return {at(0.50), at(0.99), us.back()};
}

double Ratio(double a, double b) { return b == 0 ? std::nan("") : a / b; }

std::vector<uint64_t> SampleDistinct(uint64_t range, size_t n, uint64_t seed) {
  n = static_cast<size_t>(std::min<uint64_t>(n, range));
  std::mt19937_64 rng(seed);
  // Floyd's algorithm: n draws whatever the range (a 64 GiB region has 16M
  // pages; shuffling them all would cost more than the touches).
  std::unordered_set<uint64_t> chosen;
  std::vector<uint64_t> out;
  out.reserve(n);
  for (uint64_t j = range - n; j < range; ++j) {
    const uint64_t t = std::uniform_int_distribution<uint64_t>(0, j)(rng);
    const uint64_t pick = chosen.insert(t).second ? t : j;
    if (pick == j) chosen.insert(j);
    out.push_back(pick);
  }
  std::shuffle(out.begin(), out.end(), rng);
  return out;
}

void PrintSection(const std::string& title) { std::printf("\n%s\n", title.c_str()); }

void PrintLatencyHeader() { std::printf("  %-44s %10s %10s %10s\n", "(µs)", "p50", "p99", "max"); }

void PrintLatencyRow(const std::string& label, const nlohmann::json& latency,
                     const std::string& note) {
  std::printf("  %-44s %10.1f %10.1f %10.1f%s%s\n", label.c_str(), Num(latency, "p50_us"),
              Num(latency, "p99_us"), Num(latency, "max_us"), note.empty() ? "" : "  ",
              note.c_str());
}

void PrintLine(const std::string& text) { std::printf("  %s\n", text.c_str()); }

double Num(const nlohmann::json& object, const char* key) {
  const auto it = object.find(key);
  if (it == object.end() || !it->is_number()) return std::nan("");
  return it->get<double>();
}

}  // namespace lazyram::bench
