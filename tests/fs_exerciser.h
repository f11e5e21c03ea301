// A random exerciser of one file on a lazyram mount: many random
// operations — read, write, mapped read, mapped write with msync, truncate
// up and down, punch, zero range, allocate, close and reopen, drop_caches
// now and then, concurrent writers on distinct ranges — each checked
// against an in-memory model of the file (its bytes and its size, POSIX
// semantics: reads stop at the end, mappings never reach past it).
//
// A run is replayable from its seed and operation count (the concurrent
// writers' interleaving aside, which cannot change the outcome: their
// ranges are distinct). On a mismatch it prints the seed, the operation
// and the last operations before it on stderr.
//
// Plain code that may run in a forked child (tests/test_env.h RunInChild):
// no gtest assertions.
#ifndef LAZYRAM_TESTS_FS_EXERCISER_H_
#define LAZYRAM_TESTS_FS_EXERCISER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace lazyram::testing {

struct ExerciserOptions {
  std::string path;   // the file; created (empty) if `create`
  std::string label;  // the mode, for reports
  uint64_t seed = 1;
  uint64_t ops = 2000;
  bool create = false;
  // The file's bytes at the start (its size included).
  std::vector<uint8_t> initial;
  // A region from a page server: only size-preserving operations.
  bool fixed_size = false;
  // FUSE passthrough of a memfd keeps tmpfs's behaviour: what a mapping
  // stored past the end of the last page may show again when a write past
  // the end grows the file over it (the kernel writes the memfd; the
  // daemon is not asked). With this set, writes do not grow the file while
  // such a store may be there; truncations and fallocate, which the
  // daemon serves, still must read zero there (POSIX).
  bool mapped_tail_survives_write_growth = false;
  // Sizes stay below this (truncate, writes and zero ranges past the end).
  uint64_t max_size = 4 << 20;
  // Every this many operations: close, drop the kernel's caches (root; a
  // global effect, so rare), stat and reopen. 0: never.
  uint64_t drop_caches_every = 0;
  // Every this many operations (and at the end): the whole file is read
  // and compared, and `daemon_check` (if set) runs.
  uint64_t verify_every = 500;
  // Whether the whole file is read and compared at the start too (a read
  // of everything makes a lazy region complete: off to keep it lazy).
  bool verify_at_start = true;
  // Compares the daemon's view (status size, `lazyramctl hash`) with the
  // model; returns what disagrees, or "" when all agree. `final`: the
  // check at the end of the run.
  std::function<std::string(const std::vector<uint8_t>& model, bool final)> daemon_check;
  // Asks the daemon something that looks at the file's size (its status),
  // from another thread while truncations run; returns an error or "".
  std::function<std::string()> status_poke;
  // When set, the model at the end is written here (for a later run that
  // continues from it, e.g. after a remount).
  std::string save_model_to;
};

// Runs the exercise; 0 when every check passed, 1 after printing a report.
int RunExerciser(const ExerciserOptions& options);

// The model a run saved with `save_model_to`; empty when unreadable.
std::vector<uint8_t> LoadModel(const std::string& path, bool* ok);

// SHA-256 of `bytes`, as lowercase hex.
std::string Sha256Hex(const std::vector<uint8_t>& bytes);

}  // namespace lazyram::testing

#endif  // LAZYRAM_TESTS_FS_EXERCISER_H_
