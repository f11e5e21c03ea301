#include "daemon/core/page_map.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <thread>
#include <vector>

namespace lazyram {
namespace {

constexpr PageState kAllStates[] = {PageState::kAbsent,  PageState::kFetching, PageState::kPulling,
                                    PageState::kPresent, PageState::kDirty,    PageState::kZero};

PageMap MakeMap(uint64_t pages, uint64_t capacity, PageState base) {
  absl::StatusOr<PageMap> map = PageMap::Create(pages, capacity, base);
  EXPECT_TRUE(map.ok()) << map.status();
  return *std::move(map);
}

// Checks every counter against a recount of the states, and that the
// counters add up to the size.
void ExpectCountsMatch(const PageMap& map) {
  uint64_t recount[kNumPageStates] = {};
  for (uint64_t p = 0; p < map.size(); ++p) ++recount[static_cast<int>(map.Get(p))];
  uint64_t sum = 0;
  for (PageState s : kAllStates) {
    EXPECT_EQ(map.Count(s), recount[static_cast<int>(s)]) << "state " << static_cast<int>(s);
    sum += map.Count(s);
  }
  EXPECT_EQ(sum, map.size());
  EXPECT_EQ(map.LocalCount(), recount[static_cast<int>(PageState::kPresent)] +
                                  recount[static_cast<int>(PageState::kDirty)] +
                                  recount[static_cast<int>(PageState::kZero)]);
}

uint64_t ResidentBytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) : 0;
}

TEST(PageMapTest, CreateWithAbsentBase) {
  PageMap map = MakeMap(100, 200, PageState::kAbsent);
  EXPECT_EQ(map.size(), 100u);
  EXPECT_EQ(map.capacity(), 200u);
  for (uint64_t p = 0; p < 100; ++p) EXPECT_EQ(map.Get(p), PageState::kAbsent);
  EXPECT_EQ(map.Count(PageState::kAbsent), 100u);
  EXPECT_EQ(map.LocalCount(), 0u);
  ExpectCountsMatch(map);
}

TEST(PageMapTest, CreateWithZeroBase) {
  PageMap map = MakeMap(100, 100, PageState::kZero);
  for (uint64_t p = 0; p < 100; ++p) EXPECT_EQ(map.Get(p), PageState::kZero);
  EXPECT_EQ(map.Count(PageState::kZero), 100u);
  EXPECT_EQ(map.Count(PageState::kAbsent), 0u);
  EXPECT_EQ(map.LocalCount(), 100u);
  ExpectCountsMatch(map);
}

TEST(PageMapTest, CapacityIsAtLeastSize) {
  PageMap map = MakeMap(50, 10, PageState::kAbsent);
  EXPECT_EQ(map.size(), 50u);
  EXPECT_GE(map.capacity(), 50u);
}

TEST(PageMapTest, EmptyMap) {
  PageMap map = MakeMap(0, 0, PageState::kAbsent);
  EXPECT_EQ(map.size(), 0u);
  EXPECT_EQ(map.Count(PageState::kAbsent), 0u);
  EXPECT_EQ(map.FindNext(0, PageState::kAbsent), 0u);
}

TEST(PageMapTest, SetReturnsPreviousStateAndKeepsCounts) {
  for (PageState base : {PageState::kAbsent, PageState::kZero}) {
    PageMap map = MakeMap(10, 10, base);
    EXPECT_EQ(map.Set(3, PageState::kDirty), base);
    EXPECT_EQ(map.Get(3), PageState::kDirty);
    EXPECT_EQ(map.Set(3, PageState::kDirty), PageState::kDirty);  // no change
    EXPECT_EQ(map.Set(3, base), PageState::kDirty);
    EXPECT_EQ(map.Get(3), base);
    // Every state can be stored and read back, including the base itself.
    for (uint64_t i = 0; i < 6; ++i) map.Set(i, kAllStates[i]);
    for (uint64_t i = 0; i < 6; ++i) EXPECT_EQ(map.Get(i), kAllStates[i]);
    for (PageState s : kAllStates) {
      const uint64_t expected = s == base ? 5 : 1;  // pages 6..9 stay base
      EXPECT_EQ(map.Count(s), expected)
          << "base " << static_cast<int>(base) << " state " << static_cast<int>(s);
    }
    EXPECT_EQ(map.LocalCount(), base == PageState::kZero ? 7u : 3u);
    ExpectCountsMatch(map);
  }
}

TEST(PageMapTest, TransitionSucceedsOnlyFromTheExpectedState) {
  PageMap map = MakeMap(4, 4, PageState::kAbsent);
  EXPECT_TRUE(map.Transition(1, PageState::kAbsent, PageState::kFetching));
  EXPECT_EQ(map.Get(1), PageState::kFetching);
  EXPECT_EQ(map.Count(PageState::kAbsent), 3u);
  EXPECT_EQ(map.Count(PageState::kFetching), 1u);

  // Failure leaves the page and every counter unchanged.
  EXPECT_FALSE(map.Transition(1, PageState::kAbsent, PageState::kPulling));
  EXPECT_FALSE(map.Transition(1, PageState::kPresent, PageState::kDirty));
  EXPECT_FALSE(map.Transition(2, PageState::kFetching, PageState::kPresent));
  EXPECT_EQ(map.Get(1), PageState::kFetching);
  EXPECT_EQ(map.Get(2), PageState::kAbsent);
  EXPECT_EQ(map.Count(PageState::kAbsent), 3u);
  EXPECT_EQ(map.Count(PageState::kFetching), 1u);
  EXPECT_EQ(map.Count(PageState::kPulling), 0u);
  EXPECT_EQ(map.Count(PageState::kPresent), 0u);
  EXPECT_EQ(map.Count(PageState::kDirty), 0u);

  EXPECT_TRUE(map.Transition(1, PageState::kFetching, PageState::kPresent));
  EXPECT_TRUE(map.Transition(1, PageState::kPresent, PageState::kDirty));
  EXPECT_TRUE(map.Transition(1, PageState::kDirty, PageState::kDirty));  // to itself
  EXPECT_EQ(map.Count(PageState::kDirty), 1u);
  EXPECT_TRUE(map.Transition(1, PageState::kDirty, PageState::kAbsent));  // back to base
  EXPECT_EQ(map.Count(PageState::kAbsent), 4u);
  EXPECT_EQ(map.LocalCount(), 0u);
  ExpectCountsMatch(map);
}

TEST(PageMapTest, TransitionWithZeroBase) {
  PageMap map = MakeMap(4, 4, PageState::kZero);
  EXPECT_FALSE(map.Transition(0, PageState::kAbsent, PageState::kFetching));
  EXPECT_TRUE(map.Transition(0, PageState::kZero, PageState::kDirty));
  EXPECT_TRUE(map.Transition(0, PageState::kDirty, PageState::kZero));
  EXPECT_EQ(map.Count(PageState::kZero), 4u);
  EXPECT_EQ(map.Count(PageState::kDirty), 0u);
  ExpectCountsMatch(map);
}

TEST(PageMapTest, ResizeGrowsAndShrinksWithinCapacity) {
  PageMap map = MakeMap(10, 100, PageState::kAbsent);
  map.Set(2, PageState::kPresent);
  map.Set(8, PageState::kDirty);
  map.Set(9, PageState::kZero);

  ASSERT_TRUE(map.Resize(50).ok());
  EXPECT_EQ(map.size(), 50u);
  EXPECT_EQ(map.Count(PageState::kAbsent), 47u);
  for (uint64_t p = 10; p < 50; ++p) EXPECT_EQ(map.Get(p), PageState::kAbsent);
  EXPECT_EQ(map.Get(8), PageState::kDirty);
  ExpectCountsMatch(map);

  map.Set(40, PageState::kPresent);
  ASSERT_TRUE(map.Resize(5).ok());  // cuts off 8, 9 and 40
  EXPECT_EQ(map.size(), 5u);
  EXPECT_EQ(map.Count(PageState::kAbsent), 4u);
  EXPECT_EQ(map.Count(PageState::kPresent), 1u);
  EXPECT_EQ(map.Count(PageState::kDirty), 0u);
  EXPECT_EQ(map.Count(PageState::kZero), 0u);
  ExpectCountsMatch(map);

  // Pages cut off come back in the base state.
  ASSERT_TRUE(map.Resize(100).ok());
  for (uint64_t p = 5; p < 100; ++p) EXPECT_EQ(map.Get(p), PageState::kAbsent) << p;
  EXPECT_EQ(map.Count(PageState::kAbsent), 99u);
  ExpectCountsMatch(map);

  ASSERT_TRUE(map.Resize(0).ok());
  EXPECT_EQ(map.size(), 0u);
  ExpectCountsMatch(map);
}

TEST(PageMapTest, ResizePastCapacityFails) {
  PageMap map = MakeMap(10, 20, PageState::kZero);
  map.Set(1, PageState::kDirty);
  absl::Status s = map.Resize(21);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(map.size(), 10u);
  EXPECT_EQ(map.Count(PageState::kZero), 9u);
  EXPECT_EQ(map.Count(PageState::kDirty), 1u);
  EXPECT_TRUE(map.Resize(20).ok());
  EXPECT_EQ(map.Count(PageState::kZero), 19u);
}

TEST(PageMapTest, FindNextMatchesAtEveryPosition) {
  for (PageState base : {PageState::kAbsent, PageState::kZero}) {
    for (uint64_t size = 1; size <= 41; ++size) {
      for (uint64_t pos = 0; pos < size; ++pos) {
        PageMap map = MakeMap(size, size + 16, base);
        map.Set(pos, PageState::kPresent);
        for (uint64_t from = 0; from <= pos; ++from) {
          ASSERT_EQ(map.FindNext(from, PageState::kPresent), pos)
              << "size " << size << " pos " << pos << " from " << from;
        }
        for (uint64_t from = pos + 1; from <= size + 3; ++from) {
          ASSERT_EQ(map.FindNext(from, PageState::kPresent), size)
              << "size " << size << " pos " << pos << " from " << from;
        }
        // The base state (stored as zero bytes) is found too: make every
        // page but `pos` non-base.
        for (uint64_t p = 0; p < size; ++p) map.Set(p, p == pos ? base : PageState::kDirty);
        ASSERT_EQ(map.FindNext(0, base), pos) << "size " << size << " pos " << pos;
        ASSERT_EQ(map.FindNext(pos + 1, base), size);
      }
    }
  }
}

TEST(PageMapTest, FindNextWithoutMatchReturnsSize) {
  for (uint64_t size : {0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 1001}) {
    PageMap map = MakeMap(size, size, PageState::kAbsent);
    EXPECT_EQ(map.FindNext(0, PageState::kPresent), size);
    EXPECT_EQ(map.FindNext(size / 2, PageState::kDirty), size);
  }
}

TEST(PageMapTest, FindNextFromPastTheEndReturnsSize) {
  PageMap map = MakeMap(100, 100, PageState::kAbsent);
  for (uint64_t from : {uint64_t{100}, uint64_t{101}, uint64_t{1} << 40, UINT64_MAX - 8,
                        UINT64_MAX - 3, UINT64_MAX}) {
    EXPECT_EQ(map.FindNext(from, PageState::kAbsent), 100u) << from;
  }
}

TEST(PageMapTest, FindNextIgnoresPagesPastTheSize) {
  PageMap map = MakeMap(40, 64, PageState::kAbsent);
  map.Set(37, PageState::kPresent);
  ASSERT_TRUE(map.Resize(37).ok());
  EXPECT_EQ(map.FindNext(0, PageState::kPresent), 37u);
  // Another state past the size must not be reported either.
  ASSERT_TRUE(map.Resize(40).ok());
  map.Set(38, PageState::kDirty);
  ASSERT_TRUE(map.Resize(37).ok());
  EXPECT_EQ(map.FindNext(0, PageState::kDirty), 37u);
}

TEST(PageMapTest, FindNextFindsRunsInOrder) {
  PageMap map = MakeMap(1000, 1000, PageState::kAbsent);
  const std::vector<uint64_t> marked = {0, 1, 9, 63, 64, 500, 511, 999};
  for (uint64_t p : marked) map.Set(p, PageState::kPulling);
  std::vector<uint64_t> found;
  for (uint64_t p = map.FindNext(0, PageState::kPulling); p < map.size();
       p = map.FindNext(p + 1, PageState::kPulling)) {
    found.push_back(p);
  }
  EXPECT_EQ(found, marked);
}

TEST(PageMapTest, TerabyteMapIsCheap) {
#ifdef __SANITIZE_THREAD__
  GTEST_SKIP() << "ThreadSanitizer keeps shadow memory for every byte the sweep reads";
#endif
  constexpr uint64_t kPages = uint64_t{1} << 28;  // 1 TiB of 4 KiB pages
  const uint64_t before = ResidentBytes();
  ASSERT_GT(before, 0u) << "cannot read /proc/self/statm";
  absl::StatusOr<PageMap> map = PageMap::Create(kPages, kPages, PageState::kAbsent);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->Count(PageState::kAbsent), kPages);
  map->Set(0, PageState::kPresent);
  map->Set(kPages / 2, PageState::kDirty);
  map->Set(kPages - 1, PageState::kZero);
  EXPECT_EQ(map->Get(kPages - 1), PageState::kZero);
  EXPECT_EQ(map->Get(kPages - 2), PageState::kAbsent);
  EXPECT_EQ(map->LocalCount(), 3u);
  EXPECT_EQ(map->FindNext(1, PageState::kDirty), kPages / 2);
  // A full sweep reads untouched pages, which must not become resident.
  EXPECT_EQ(map->FindNext(kPages / 2 + 1, PageState::kZero), kPages - 1);
  EXPECT_EQ(map->FindNext(1, PageState::kFetching), kPages);
  const uint64_t after = ResidentBytes();
  EXPECT_LT(after, before + (uint64_t{64} << 20))
      << "resident grew from " << before << " to " << after << " bytes";
}

TEST(PageMapTest, MoveKeepsStatesAndCounts) {
  PageMap a = MakeMap(10, 10, PageState::kAbsent);
  a.Set(4, PageState::kDirty);
  PageMap b = std::move(a);
  EXPECT_EQ(b.Get(4), PageState::kDirty);
  EXPECT_EQ(b.Count(PageState::kDirty), 1u);
  EXPECT_EQ(b.Count(PageState::kAbsent), 9u);
  PageMap c = MakeMap(3, 3, PageState::kZero);
  c = std::move(b);
  EXPECT_EQ(c.size(), 10u);
  EXPECT_EQ(c.Get(4), PageState::kDirty);
  EXPECT_EQ(c.Get(5), PageState::kAbsent);
  ExpectCountsMatch(c);
}

TEST(PageMapTest, RacingTransitionsClaimEachPageOnce) {
  constexpr uint64_t kPages = 1 << 16;
  constexpr int kThreads = 4;
  PageMap map = MakeMap(kPages, kPages, PageState::kAbsent);
  std::vector<std::atomic<uint8_t>> winners(kPages);
  std::atomic<int> ready{0};
  uint64_t won[kThreads] = {};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < kThreads) {
      }
      // Half the threads sweep forwards, half backwards, so they collide
      // in the middle as well as at the ends.
      for (uint64_t i = 0; i < kPages; ++i) {
        const uint64_t p = t % 2 == 0 ? i : kPages - 1 - i;
        if (map.Transition(p, PageState::kAbsent, PageState::kFetching)) {
          winners[p].fetch_add(1);
          ++won[t];
          // The winner alone may move the page on.
          if (p % 3 == 0) {
            EXPECT_TRUE(map.Transition(p, PageState::kFetching, PageState::kPresent));
          }
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  uint64_t total = 0;
  for (uint64_t n : won) total += n;
  EXPECT_EQ(total, kPages);
  for (uint64_t p = 0; p < kPages; ++p) ASSERT_EQ(winners[p].load(), 1) << "page " << p;
  EXPECT_EQ(map.Count(PageState::kAbsent), 0u);
  EXPECT_EQ(map.Count(PageState::kPresent), (kPages + 2) / 3);
  EXPECT_EQ(map.Count(PageState::kFetching), kPages - (kPages + 2) / 3);
  ExpectCountsMatch(map);
}

// A scan racing transitions returns either the size or a page that was in
// the wanted state at some point; pages claimed meanwhile may be missed only
// if they changed during the scan.
TEST(PageMapTest, FindNextRacesTransitions) {
  constexpr uint64_t kPages = 1 << 14;
  PageMap map = MakeMap(kPages, kPages, PageState::kAbsent);
  std::atomic<bool> started{false}, done{false};
  std::thread claimer([&] {
    while (!started.load()) {
    }
    for (uint64_t p = 0; p < kPages; ++p) {
      EXPECT_TRUE(map.Transition(p, PageState::kAbsent, PageState::kPulling));
      if (p % 64 == 0) std::this_thread::yield();
    }
    done = true;
  });
  started = true;
  uint64_t last = 0;
  while (!done.load()) {
    const uint64_t p = map.FindNext(0, PageState::kAbsent);
    // Pages are claimed in order, so the first absent page never moves back.
    ASSERT_GE(p, last);
    ASSERT_LE(p, kPages);
    last = p;
  }
  claimer.join();
  EXPECT_EQ(map.FindNext(0, PageState::kAbsent), kPages);
  EXPECT_EQ(map.Count(PageState::kPulling), kPages);
}

// A map in a file keeps its states for the next map of the same file; the
// new map counts them with Recover and returns in-flight pages to absent.
TEST(PageMapTest, FileBackedMapSurvivesAndRecovers) {
  for (PageState base : {PageState::kAbsent, PageState::kZero}) {
    const int fd = memfd_create("page_map_test", MFD_CLOEXEC);
    ASSERT_GE(fd, 0);
    constexpr uint64_t kOffset = 4096, kPages = 5000;
    ASSERT_EQ(ftruncate(fd, kOffset + kPages), 0);
    {
      absl::StatusOr<PageMap> map = PageMap::CreateInFile(fd, kOffset, kPages, kPages, base);
      ASSERT_TRUE(map.ok()) << map.status();
      map->Set(1, PageState::kPresent);
      map->Set(9, PageState::kDirty);
      map->Set(10, PageState::kFetching);
      map->Set(4000, PageState::kPulling);
      map->Set(4999, PageState::kZero);
      map->Set(17, PageState::kAbsent);
    }
    absl::StatusOr<PageMap> map = PageMap::CreateInFile(fd, kOffset, kPages, kPages, base);
    ASSERT_TRUE(map.ok()) << map.status();
    map->Recover(0, kPages);
    ExpectCountsMatch(*map);
    EXPECT_EQ(map->Get(1), PageState::kPresent);
    EXPECT_EQ(map->Get(9), PageState::kDirty);
    EXPECT_EQ(map->Get(10), PageState::kAbsent);
    EXPECT_EQ(map->Get(4000), PageState::kAbsent);
    EXPECT_EQ(map->Get(4999), PageState::kZero);
    EXPECT_EQ(map->Get(17), PageState::kAbsent);
    EXPECT_EQ(map->Get(2), base);
    EXPECT_EQ(map->Count(PageState::kPresent), 1u);
    EXPECT_EQ(map->Count(PageState::kDirty), 1u);
    close(fd);
  }
}

// A byte no state encodes (a damaged file) is never served as local.
TEST(PageMapTest, RecoverTreatsUnknownBytesAsAbsent) {
  const int fd = memfd_create("page_map_test", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 64), 0);
  const uint8_t junk[] = {0, 0xff, 7, 4};
  ASSERT_EQ(pwrite(fd, junk, sizeof junk, 0), static_cast<ssize_t>(sizeof junk));
  absl::StatusOr<PageMap> map = PageMap::CreateInFile(fd, 0, 64, 64, PageState::kZero);
  ASSERT_TRUE(map.ok()) << map.status();
  map->Recover(0, 64);
  ExpectCountsMatch(*map);
  EXPECT_EQ(map->Get(1), PageState::kAbsent);
  EXPECT_EQ(map->Get(2), PageState::kAbsent);
  EXPECT_EQ(map->Get(3), PageState::kPresent);
  close(fd);
}

}  // namespace
}  // namespace lazyram
