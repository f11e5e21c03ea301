// lazyram-bench: measures lazyram against its baselines in one run, on one
// machine, and prints one table (or --json). The seven cases are those of
// issue 4, each in its own case_*.cc; every baseline is measured in the same
// invocation as what it is compared to.
//
// --smoke runs every case with tiny sizes: CI uses it to check that each
// case runs and produces numbers, never how fast. The exit status is 1 when
// any case failed to run or produced a non-number.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "tools/bench/bench.h"
#include "tools/bench/bench_util.h"

namespace lazyram::bench {

Options SmokeOptions() {
  Options o;
  o.smoke = true;
  o.fault_mib = 16;
  o.fault_touches = 100;
  o.huge_mib = 32;
  o.huge_blocks = 8;
  o.load_mib = 32;
  o.load_touches = 100;
  o.pull_mib = 32;
  o.write_mib = 16;
  o.write_pages = 1024;
  o.memory_mib = 32;
  o.scale_sparse_gib = 16;
  o.scale_small_gib = 1;
  o.scale_large_gib = 4;
  o.scale_touches = 100;
  return o;
}

namespace {

// The cases named in `list` ("all", or names and numbers, comma-separated).
std::set<int> SelectCases(const std::string& list) {
  std::set<int> selected;
  const std::vector<std::string> items = absl::StrSplit(list, ',', absl::SkipWhitespace());
  for (const std::string& item : items) {
    bool found = false;
    for (const Case& c : kCases) {
      if (item == "all" || item == c.name || item == std::to_string(c.number)) {
        selected.insert(c.number);
        found = true;
      }
    }
    if (!found) throw CLI::ValidationError("--cases", "unknown case '" + item + "'");
  }
  return selected;
}

// Every number in a case's result must be finite: a ratio over a zero or a
// measurement that never happened shows up here.
std::string FirstNonNumber(const nlohmann::json& j, const std::string& where) {
  if (j.is_number_float() && !std::isfinite(j.get<double>())) return where;
  if (j.is_null()) return where;
  if (j.is_object()) {
    for (const auto& [key, value] : j.items()) {
      std::string bad = FirstNonNumber(value, where + "." + key);
      if (!bad.empty()) return bad;
    }
  }
  return "";
}

nlohmann::json RunCase(const Case& c, const Options& o, const testing::TempDir& dir) {
  std::fprintf(stderr, "lazyram-bench: case %d (%s)...\n", c.number, c.name);
  const Stopwatch watch;
  nlohmann::json result;
  try {
    result = c.run(o, dir);
    const std::string bad = FirstNonNumber(result, c.name);
    if (!bad.empty()) result = {{"error", "not a number: " + bad}};
  } catch (const std::exception& e) {
    result = {{"error", e.what()}};
  }
  result["case"] = c.number;
  result["elapsed_s"] = watch.Seconds();
  std::fprintf(stderr, "lazyram-bench: case %d (%s) %s in %.1f s\n", c.number, c.name,
               result.contains("error") ? "FAILED" : "done", watch.Seconds());
  return result;
}

void PrintTable(const nlohmann::json& results) {
  std::printf("lazyram-bench  cores=%d%s\n", results.at("cores").get<int>(),
              results.at("smoke").get<bool>() ? "  (smoke: tiny sizes, numbers mean nothing)" : "");
  for (const Case& c : kCases) {
    if (!results.contains(c.name)) continue;
    const nlohmann::json& r = results.at(c.name);
    if (r.contains("error")) {
      PrintSection(absl::StrFormat("%d. %s: FAILED: %s", c.number, c.name,
                                   r.at("error").get<std::string>()));
    } else {
      c.print(r);
    }
  }
}

}  // namespace
}  // namespace lazyram::bench

int main(int argc, char** argv) {
  using namespace lazyram::bench;
  const bool smoke = std::any_of(argv + 1, argv + argc,
                                 [](const char* a) { return std::strcmp(a, "--smoke") == 0; });
  Options o = smoke ? SmokeOptions() : Options{};
  std::string cases = "all";
  bool json = false;

  CLI::App app{"lazyram-bench: lazyram against its baselines, side by side in one run"};
  app.add_flag("--smoke", o.smoke, "Tiny sizes (the defaults below shrink); for CI");
  app.add_option("--cases", cases,
                 "Comma-separated names or numbers: fault,huge,load,pull,write,"
                 "memory,scale (1-7) or all")
      ->capture_default_str();
  app.add_flag("--json", json, "Print one JSON object instead of the table");
  auto size = [&](const char* name, auto& value, const char* help) {
    app.add_option(name, value, help)
        ->capture_default_str()
        ->check(CLI::PositiveNumber)
        ->group("Sizes");
  };
  size("--fault-mib", o.fault_mib, "1 fault: image size");
  size("--fault-touches", o.fault_touches, "1 fault: pages touched per variant");
  size("--huge-mib", o.huge_mib, "2 huge: image size");
  size("--huge-blocks", o.huge_blocks, "2 huge: 2 MiB blocks touched per variant");
  size("--load-mib", o.load_mib, "3 load: image size (the pull must outlast the touches)");
  size("--load-touches", o.load_touches, "3 load: pages touched in the last quarter");
  size("--pull-mib", o.pull_mib, "4 pull: image size");
  size("--write-mib", o.write_mib, "5 write: region size");
  size("--write-pages", o.write_pages, "5 write: distinct pages dirtied");
  size("--memory-mib", o.memory_mib, "6 memory: region size");
  size("--scale-sparse-gib", o.scale_sparse_gib, "7 scale: sparse image mounted");
  size("--scale-small-gib", o.scale_small_gib, "7 scale: small region for case-1 touches");
  size("--scale-large-gib", o.scale_large_gib, "7 scale: large region for case-1 touches");
  size("--scale-touches", o.scale_touches, "7 scale: pages touched per region");
  app.add_flag("--write-whole-pages", o.write_whole_pages,
               "5 write: memset each dirtied page instead of one 8-byte store")
      ->group("Sizes");
  app.add_option("--store-dir", o.store_dir,
                 "6 memory: parent directory of the DIR store (on disk; default: the run's temp "
                 "dir, or /var/tmp if that is tmpfs)")
      ->group("Sizes");
  std::set<int> selected;
  try {
    app.parse(argc, argv);
    selected = SelectCases(cases);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  // The binaries under test sit beside this one in the build tree unless
  // LAZYRAMD / LAZYRAMCTL say otherwise.
  const auto build =
      std::filesystem::canonical("/proc/self/exe").parent_path().parent_path().parent_path();
  setenv("LAZYRAMD", (build / "daemon/cmd/lazyramd").c_str(), 0);
  setenv("LAZYRAMCTL", (build / "client/lazyramctl").c_str(), 0);

  lazyram::testing::TempDir dir;
  nlohmann::json results = {{"cores", std::thread::hardware_concurrency()}, {"smoke", o.smoke}};
  bool failed = false;
  for (const Case& c : kCases) {
    if (selected.count(c.number) == 0) continue;
    results[c.name] = RunCase(c, o, dir);
    failed |= results[c.name].contains("error");
  }
  if (json) {
    std::printf("%s\n", results.dump(2).c_str());
  } else {
    PrintTable(results);
  }
  std::fflush(stdout);
  return failed ? 1 : 0;
}
