// Small helpers shared by the lazyram-bench cases: failing a case, timing,
// percentile summaries, random samples, and table rows.
#ifndef LAZYRAM_TOOLS_BENCH_BENCH_UTIL_H_
#define LAZYRAM_TOOLS_BENCH_BENCH_UTIL_H_

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lazyram::bench {

// A case could not run. Thrown rather than exit()ing so that the mounts and
// page servers of the case are torn down by their destructors on the way out.
class BenchError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void Fail(const std::string& what);
// Fail(what + ": " + strerror(errno)).
[[noreturn]] void FailErrno(const std::string& what);
void Must(const absl::Status& status, const std::string& what);
template <typename T>
T Must(absl::StatusOr<T> value, const std::string& what) {
  Must(value.status(), what);
  return *std::move(value);
}

// Monotonic time since construction.
class Stopwatch {
 public:
  Stopwatch() : start_(Clock::now()) {}
  double Micros() const {
    return std::chrono::duration<double, std::micro>(Clock::now() - start_).count();
  }
  double Millis() const { return Micros() / 1e3; }
  double Seconds() const { return Micros() / 1e6; }

 private:
  using Clock = std::chrono::steady_clock;
  Clock::time_point start_;
};

// p50/p99/max of a set of latencies in microseconds.
struct Latency {
  double p50 = 0, p99 = 0, max = 0;
  nlohmann::json Json() const { return {{"p50_us", p50}, {"p99_us", p99}, {"max_us", max}}; }
};
// Fails on an empty set: a variant that measured nothing did not run.
Latency Summarize(std::vector<double> us);

// `a / b`; NaN when b is 0, which the final check reports as a failed case.
double Ratio(double a, double b);

// `n` distinct values of [0, range) in random order (n is clamped to range).
std::vector<uint64_t> SampleDistinct(uint64_t range, size_t n, uint64_t seed);

inline constexpr uint64_t kPage = 4096;
inline constexpr uint64_t kMiB = uint64_t{1} << 20;
inline constexpr uint64_t kGiB = uint64_t{1} << 30;
inline constexpr uint64_t kHugePage = 2 * kMiB;

// Table layout: a section title, then rows of a label and columns.
void PrintSection(const std::string& title);
void PrintLatencyHeader();
// One latency row from a Latency::Json() object, with an optional note.
void PrintLatencyRow(const std::string& label, const nlohmann::json& latency,
                     const std::string& note = "");
// "label: value" under a section.
void PrintLine(const std::string& text);

// A number from a case's JSON result.
double Num(const nlohmann::json& object, const char* key);

}  // namespace lazyram::bench

#endif  // LAZYRAM_TOOLS_BENCH_BENCH_UTIL_H_
