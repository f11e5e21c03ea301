#include "gtest/gtest.h"
TEST(Placeholder, source_faults) { GTEST_SKIP() << "being written"; }
