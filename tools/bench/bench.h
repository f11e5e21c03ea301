// lazyram-bench: the options every case reads and the table of cases.
//
// Each case (case_*.cc, numbered as in issue 4) measures lazyram and its
// baselines in the same invocation and returns one JSON object with stable
// keys; its Print function renders that object as one section of the table.
// A case that cannot run throws BenchError (bench_util.h): main records the
// error, every mount and server the case started is torn down by its
// destructor, and the remaining cases still run.
#ifndef LAZYRAM_TOOLS_BENCH_BENCH_H_
#define LAZYRAM_TOOLS_BENCH_BENCH_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/test_env.h"

namespace lazyram::bench {

// Sizes of the full run; SmokeOptions() shrinks them. Flags are defined in
// lazyram_bench.cc only.
struct Options {
  bool smoke = false;
  // 1. fault: absent 4 KiB pages, MADV_RANDOM.
  uint64_t fault_mib = 256;
  int fault_touches = 2000;
  // 2. huge: first touches of 2 MiB blocks, MADV_HUGEPAGE.
  uint64_t huge_mib = 2048;
  int huge_blocks = 256;
  // 3. load: case-1 touches in the last quarter while the pull runs.
  uint64_t load_mib = 2048;
  int load_touches = 2000;
  // 4. pull: full-pull throughput.
  uint64_t pull_mib = 4096;
  // 5. write: dirtying random pages of a fully local region.
  uint64_t write_mib = 1024;
  int write_pages = 131072;
  bool write_whole_pages = false;  // memset each page instead of one 8-byte store
  // 6. memory: host memory after a full pull, --store mem and DIR.
  uint64_t memory_mib = 2048;
  std::string store_dir;  // parent of the DIR store; empty: the run's temp dir
  // 7. scale: a huge sparse mount; case 1 on a small and a large region.
  uint64_t scale_sparse_gib = 1024;
  uint64_t scale_small_gib = 1;
  uint64_t scale_large_gib = 64;
  int scale_touches = 2000;
};

// Tiny sizes for CI: every case runs, in well under 30 s in all.
Options SmokeOptions();

struct Case {
  int number;
  const char* name;
  nlohmann::json (*run)(const Options& options, const testing::TempDir& dir);
  void (*print)(const nlohmann::json& result);
};

nlohmann::json RunFaultCase(const Options& options, const testing::TempDir& dir);
void PrintFaultCase(const nlohmann::json& result);
nlohmann::json RunHugeCase(const Options& options, const testing::TempDir& dir);
void PrintHugeCase(const nlohmann::json& result);
nlohmann::json RunLoadCase(const Options& options, const testing::TempDir& dir);
void PrintLoadCase(const nlohmann::json& result);
nlohmann::json RunPullCase(const Options& options, const testing::TempDir& dir);
void PrintPullCase(const nlohmann::json& result);
nlohmann::json RunWriteCase(const Options& options, const testing::TempDir& dir);
void PrintWriteCase(const nlohmann::json& result);
nlohmann::json RunMemoryCase(const Options& options, const testing::TempDir& dir);
void PrintMemoryCase(const nlohmann::json& result);
nlohmann::json RunScaleCase(const Options& options, const testing::TempDir& dir);
void PrintScaleCase(const nlohmann::json& result);

// In issue order.
inline constexpr Case kCases[] = {
    {1, "fault", RunFaultCase, PrintFaultCase}, {2, "huge", RunHugeCase, PrintHugeCase},
    {3, "load", RunLoadCase, PrintLoadCase},    {4, "pull", RunPullCase, PrintPullCase},
    {5, "write", RunWriteCase, PrintWriteCase}, {6, "memory", RunMemoryCase, PrintMemoryCase},
    {7, "scale", RunScaleCase, PrintScaleCase},
};

}  // namespace lazyram::bench

#endif  // LAZYRAM_TOOLS_BENCH_BENCH_H_
