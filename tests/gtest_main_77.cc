// main() of every GoogleTest program in lazyram (daemon/*_unit_test,
// fusefs_unit_test, client_unit_test and the integration tests in tests/):
// gtest's own main, except that a program whose tests were all skipped
// exits 77, which meson reports as SKIP instead of OK.
//
// The rule, after RUN_ALL_TESTS:
//   - a failure (or any non-zero result of RUN_ALL_TESTS): that result,
//     unchanged — meson reports FAIL;
//   - no failure, at least one test skipped and none passed: 77 (SKIP).
//     Nothing the program is for was checked, so it must not count as a
//     pass; this is also what a program gets when an environment or a
//     test-suite set-up skips;
//   - no failure, at least one test passed: 0 (OK), even when others were
//     skipped — the program did check something. The skipped tests are
//     named on stderr after gtest's own summary, so the log shows them;
//   - no test ran at all (--gtest_filter matched nothing, --gtest_list_tests):
//     0, as gtest's main returns.
// A program with tests that are all skipped in some environments (say the
// failover tests that need network namespaces) is therefore best run as a
// meson test of its own (the same executable with a --gtest_filter), so that
// its skip shows as SKIP rather than hiding behind the passes of other tests.
#include <cstdio>

#include "gtest/gtest.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  const int result = RUN_ALL_TESTS();
  if (result != 0) return result;
  const testing::UnitTest& unit = *testing::UnitTest::GetInstance();
  const int skipped = unit.skipped_test_count();
  const int passed = unit.successful_test_count();  // excludes skipped tests
  if (skipped == 0) return 0;
  std::fprintf(stderr, "%d test(s) SKIPPED, %d passed:\n", skipped, passed);
  for (int s = 0; s < unit.total_test_suite_count(); ++s) {
    const testing::TestSuite& suite = *unit.GetTestSuite(s);
    for (int t = 0; t < suite.total_test_count(); ++t) {
      const testing::TestInfo& info = *suite.GetTestInfo(t);
      if (info.should_run() && info.result()->Skipped()) {
        std::fprintf(stderr, "  SKIPPED %s.%s\n", suite.name(), info.name());
      }
    }
  }
  if (passed > 0) {
    std::fprintf(stderr, "the program passes: %d test(s) ran to a pass\n", passed);
    return 0;
  }
  std::fprintf(stderr, "every test that ran was skipped: exit 77 (SKIP)\n");
  return 77;
}
