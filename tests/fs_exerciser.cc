#include "tests/fs_exerciser.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <openssl/evp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace lazyram::testing {
namespace {

constexpr uint64_t kPage = 4096;
constexpr size_t kRecent = 24;  // operations shown in a report

// One operation of a concurrent writer, prepared by the main thread (so
// that a seed replays the same bytes).
struct PlannedWrite {
  uint64_t offset;
  std::vector<uint8_t> data;
  bool via_mmap;
};

class Exerciser {
 public:
  explicit Exerciser(const ExerciserOptions& o) : o_(o), rng_(o.seed), model_(o.initial) {}
  ~Exerciser() {
    Unmap();
    if (fd_ >= 0) close(fd_);
  }

  int Run() {
    const int flags = O_RDWR | (o_.create ? O_CREAT | O_EXCL : 0);
    fd_ = open(o_.path.c_str(), flags, 0600);
    if (fd_ < 0) return Errno("open");
    if (int rc = CheckSize("start"); rc != 0) return rc;
    if (o_.verify_at_start) {
      if (int rc = VerifyAll(false); rc != 0) return rc;
    }
    for (op_ = 1; op_ <= o_.ops; ++op_) {
      if (int rc = OneOp(); rc != 0) return rc;
      if (int rc = CheckSize("after the operation"); rc != 0) return rc;
      if (o_.drop_caches_every != 0 && op_ % o_.drop_caches_every == 0) {
        if (int rc = DropCaches(); rc != 0) return rc;
      }
      if (o_.verify_every != 0 && op_ % o_.verify_every == 0) {
        if (int rc = VerifyAll(false); rc != 0) return rc;
      }
    }
    --op_;
    if (int rc = VerifyAll(true); rc != 0) return rc;
    Unmap();
    close(fd_);
    fd_ = -1;
    if (!o_.save_model_to.empty()) {
      FILE* f = std::fopen(o_.save_model_to.c_str(), "wb");
      if (f == nullptr || std::fwrite(model_.data(), 1, model_.size(), f) != model_.size() ||
          std::fclose(f) != 0) {
        return Errno("saving the model");
      }
    }
    std::fprintf(stderr, "fs exerciser [%s]: seed %llu, %llu operations passed, final size %zu\n",
                 o_.label.c_str(), static_cast<unsigned long long>(o_.seed),
                 static_cast<unsigned long long>(o_.ops), model_.size());
    return 0;
  }

 private:
  uint64_t Rand(uint64_t n) { return n == 0 ? 0 : rng_() % n; }  // [0, n)
  bool Chance(int percent) { return Rand(100) < static_cast<uint64_t>(percent); }
  uint64_t size() const { return model_.size(); }
  void SetSize(uint64_t n) {
    if (n != size()) tail_written_ = false;
    model_.resize(n, 0);
  }

  uint64_t PickLength() {
    const uint64_t r = Rand(100);
    if (r < 30) return 1 + Rand(512);
    if (r < 55) return 1 + Rand(3 * kPage);
    if (r < 70) return kPage * (1 + Rand(4));
    if (r < 80) return Chance(50) ? 64 * 1024 + 100 : 64 * 1024;
    if (r < 90) return 1 + Rand(256 * 1024);
    return kPage * (1 + Rand(16)) + Rand(8);
  }

  // An offset in [0, limit], often on or near a page boundary or the end.
  uint64_t PickOffset(uint64_t limit) {
    const uint64_t r = Rand(100);
    uint64_t off;
    if (r < 30) {
      off = Rand(limit / kPage + 1) * kPage;
    } else if (r < 50) {
      off = Rand(limit / kPage + 1) * kPage + Rand(33) - 16;
    } else if (r < 70) {
      off = limit - Rand(std::min<uint64_t>(limit, 2 * kPage) + 1);
    } else {
      off = Rand(limit + 1);
    }
    return std::min(off, limit);  // also catches the wrap below zero
  }

  std::vector<uint8_t> RandomBytes(uint64_t n) {
    std::vector<uint8_t> out(n);
    for (uint64_t i = 0; i < n; i += 8) {
      const uint64_t v = rng_();
      std::memcpy(out.data() + i, &v, std::min<uint64_t>(8, n - i));
    }
    return out;
  }

  void Note(std::string op) {
    recent_.push_back(absl::StrCat("#", op_, " ", op, " (size now ", size(), ")"));
    if (recent_.size() > kRecent) recent_.pop_front();
  }

  int Mismatch(const std::string& what) {
    std::fprintf(stderr,
                 "fs exerciser [%s]: MISMATCH at operation #%llu: %s\n"
                 "  replay: seed %llu, %llu operations (LAZYRAM_EXERCISER_SEED=%llu)\n"
                 "  model size %zu; the last operations:\n",
                 o_.label.c_str(), static_cast<unsigned long long>(op_), what.c_str(),
                 static_cast<unsigned long long>(o_.seed), static_cast<unsigned long long>(o_.ops),
                 static_cast<unsigned long long>(o_.seed), model_.size());
    for (const std::string& r : recent_) std::fprintf(stderr, "    %s\n", r.c_str());
    return 1;
  }
  int Errno(const char* what) { return Mismatch(absl::StrCat(what, ": ", std::strerror(errno))); }

  // Compares `got` with the model at `offset`.
  int Compare(const uint8_t* got, uint64_t offset, uint64_t n, const char* what) {
    if (std::memcmp(got, model_.data() + offset, n) == 0) return 0;
    uint64_t i = 0;
    while (got[i] == model_[offset + i]) ++i;
    uint64_t j = i;
    while (j < n && got[j] != model_[offset + j]) ++j;
    return Mismatch(absl::StrFormat(
        "%s of %d+%d: first difference at byte %d (page %d): got 0x%02x, want 0x%02x; %d "
        "differing bytes from there",
        what, offset, n, offset + i, (offset + i) / kPage, got[i], model_[offset + i], j - i));
  }

  int CheckSize(const char* when) {
    struct stat st;
    if (fstat(fd_, &st) != 0) return Errno("fstat");
    if (static_cast<uint64_t>(st.st_size) != size()) {
      return Mismatch(absl::StrCat("fstat ", when, ": st_size ", st.st_size, ", want ", size()));
    }
    return 0;
  }
  int CheckPathSize(const char* when) {
    struct stat st;
    if (stat(o_.path.c_str(), &st) != 0) return Errno("stat");
    if (static_cast<uint64_t>(st.st_size) != size()) {
      return Mismatch(absl::StrCat("stat ", when, ": st_size ", st.st_size, ", want ", size()));
    }
    return 0;
  }

  int OneOp() {
    const bool resizable = !o_.fixed_size;
    for (;;) {
      const uint64_t r = Rand(100);
      if (r < 20) return OpRead();
      if (r < 40) return OpWrite();
      if (r < 48) return OpMapRead();
      if (r < 56) return OpMapWrite();
      if (r < 63) {
        if (!resizable) continue;
        return OpTruncate();
      }
      if (r < 70) return OpPunch();
      if (r < 77) return OpZeroRange();
      if (r < 80) {
        if (!resizable) continue;
        return OpAllocate();
      }
      if (r < 86) return OpReopen();
      if (r < 90) {
        Note("stat");
        return CheckPathSize("by path");
      }
      if (r < 93) return OpConcurrent();
      if (r < 96) return OpMapWritePastEnd();
      if (r < 98 && resizable && o_.status_poke) return OpTruncateWhilePoked();
      return OpRead();
    }
  }

  int OpRead() {
    const uint64_t off = PickOffset(size() + kPage);
    const uint64_t len = PickLength();
    Note(absl::StrCat("pread ", off, "+", len));
    std::vector<uint8_t> buf(len, 0xEE);
    const ssize_t n = pread(fd_, buf.data(), len, static_cast<off_t>(off));
    if (n < 0) return Errno("pread");
    const uint64_t want = off >= size() ? 0 : std::min(len, size() - off);
    if (static_cast<uint64_t>(n) != want) {
      return Mismatch(absl::StrCat("pread ", off, "+", len, " returned ", n, " bytes, want ", want,
                                   " (size ", size(), ")"));
    }
    return Compare(buf.data(), off, want, "pread");
  }

  int OpWrite() {
    uint64_t off, len = PickLength();
    // The one growth whose gap may not read zero (ExerciserOptions):
    // writes stay inside the file then.
    const bool inside = o_.fixed_size || (tail_written_ && o_.mapped_tail_survives_write_growth);
    if (inside) {
      if (size() == 0) return 0;
      len = std::min(len, size());
      off = PickOffset(size() - len);
    } else {
      len = std::min(len, o_.max_size);
      off = PickOffset(std::min(size() + 2 * kPage, o_.max_size - len));
    }
    Note(absl::StrCat("pwrite ", off, "+", len));
    const std::vector<uint8_t> data = RandomBytes(len);
    const ssize_t n = pwrite(fd_, data.data(), len, static_cast<off_t>(off));
    if (n < 0) return Errno("pwrite");
    if (static_cast<uint64_t>(n) != len) {
      return Mismatch(absl::StrCat("pwrite wrote ", n, " of ", len, " bytes"));
    }
    if (off + len > size()) SetSize(off + len);
    std::copy(data.begin(), data.end(), model_.begin() + static_cast<ptrdiff_t>(off));
    return 0;
  }

  // A mapping of [offset, offset+len) of the file, which lies within it.
  struct Mapping {
    uint8_t* base = nullptr;  // of the page holding `offset`
    uint64_t length = 0;
    uint8_t* at = nullptr;  // `offset`
    ~Mapping() {
      if (base != nullptr) munmap(base, length);
    }
  };
  bool Map(int fd, uint64_t offset, uint64_t len, bool writable, Mapping* m) {
    const uint64_t page = offset / kPage * kPage;
    m->length = offset + len - page;
    void* p = mmap(nullptr, m->length, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED,
                   fd, static_cast<off_t>(page));
    if (p == MAP_FAILED) return false;
    m->base = static_cast<uint8_t*>(p);
    m->at = m->base + (offset - page);
    return true;
  }

  // One shared mapping of the whole room (max_size, or the fixed size),
  // held across operations — truncations, punches, writes — until the file
  // is closed. Only the part inside the file is touched.
  bool Held() {
    if (held_ != nullptr) return true;
    held_length_ = o_.fixed_size ? std::max<uint64_t>(size(), kPage) : o_.max_size;
    void* p = mmap(nullptr, held_length_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) return false;
    held_ = static_cast<uint8_t*>(p);
    return true;
  }
  void Unmap() {
    if (held_ != nullptr) munmap(held_, held_length_);
    held_ = nullptr;
  }

  int OpMapRead() {
    if (size() == 0) return 0;
    const uint64_t off = PickOffset(size() - 1);
    const uint64_t len = std::min(PickLength(), size() - off);
    const bool held = Chance(50);
    Note(absl::StrCat(held ? "held-mapping read " : "mapped read ", off, "+", len));
    Mapping m;
    const uint8_t* at;
    if (held) {
      if (!Held()) return Errno("mmap of the whole file");
      at = held_ + off;
    } else {
      if (!Map(fd_, off, len, false, &m)) return Errno("mmap for reading");
      at = m.at;
    }
    if (int rc = Compare(at, off, len, "mapped read"); rc != 0) return rc;
    // POSIX: the rest of the last page reads zero through a mapping —
    // unless this run stored there through one (OpMapWritePastEnd) since
    // the size last changed.
    if (off + len == size() && size() % kPage != 0 && !tail_written_) {
      const uint64_t tail = kPage - size() % kPage;
      for (uint64_t i = 0; i < tail; ++i) {
        if (at[len + i] != 0) {
          return Mismatch(absl::StrCat("mapped read: byte ", size() + i,
                                       " past the end of the last page is 0x",
                                       absl::Hex(at[len + i]), ", want 0"));
        }
      }
    }
    return 0;
  }

  // POSIX: a store through a mapping past the end (inside the last page)
  // is not written to the file; the page's tail reads zero again once the
  // file grows over it.
  int OpMapWritePastEnd() {
    if (size() % kPage == 0) return OpMapRead();
    const uint64_t page = size() / kPage * kPage;
    const uint64_t len = 1 + Rand(page + kPage - size());
    const uint64_t at = size() + Rand(page + kPage - size() - len + 1);
    Note(absl::StrCat("mapped write past the end ", at, "+", len));
    const std::vector<uint8_t> data = RandomBytes(len);
    Mapping m;
    if (!Map(fd_, page, size() - page, true, &m)) return Errno("mmap of the last page");
    std::memcpy(m.base + (at - page), data.data(), len);
    if (msync(m.base, m.length, MS_SYNC) != 0) return Errno("msync");
    tail_written_ = true;
    return 0;
  }

  int OpMapWrite() {
    if (size() == 0) return 0;
    const uint64_t off = PickOffset(size() - 1);
    const uint64_t len = std::min(PickLength(), size() - off);
    const bool held = Chance(50);
    Note(absl::StrCat(held ? "held-mapping write+msync " : "mapped write+msync ", off, "+", len));
    const std::vector<uint8_t> data = RandomBytes(len);
    if (held) {
      if (!Held()) return Errno("mmap of the whole file");
      std::memcpy(held_ + off, data.data(), len);
      const uint64_t page = off / kPage * kPage;
      if (msync(held_ + page, off + len - page, MS_SYNC) != 0) return Errno("msync");
    } else {
      Mapping m;
      if (!Map(fd_, off, len, true, &m)) return Errno("mmap for writing");
      std::memcpy(m.at, data.data(), len);
      if (msync(m.base, m.length, MS_SYNC) != 0) return Errno("msync");
    }
    std::copy(data.begin(), data.end(), model_.begin() + static_cast<ptrdiff_t>(off));
    return 0;
  }

  int OpTruncate() {
    uint64_t to;
    const uint64_t r = Rand(100);
    if (r < 40) {
      to = Rand(size() + 1);
    } else if (r < 80) {
      to = std::min(o_.max_size, size() + PickLength());
    } else {
      to = PickOffset(o_.max_size);
    }
    Note(absl::StrCat("ftruncate ", to));
    if (ftruncate(fd_, static_cast<off_t>(to)) != 0) return Errno("ftruncate");
    SetSize(to);
    return 0;
  }

  // Truncations up and down while another thread keeps asking the daemon
  // for its status (which looks at the size: under passthrough it adopts
  // the memfd's growth, and must never bring back a size cut meanwhile).
  int OpTruncateWhilePoked() {
    const int count = 5 + static_cast<int>(Rand(10));
    std::vector<uint64_t> sizes;
    for (int i = 0; i < count; ++i) sizes.push_back(Rand(o_.max_size + 1));
    Note(absl::StrCat(count, " truncations while the daemon is asked its status, last to ",
                      sizes.back()));
    std::atomic<bool> stop{false};
    std::string poke_error;
    std::thread poker([&] {
      while (!stop.load() && poke_error.empty()) poke_error = o_.status_poke();
    });
    int rc = 0;
    for (uint64_t to : sizes) {
      if (ftruncate(fd_, static_cast<off_t>(to)) != 0) {
        rc = Errno("ftruncate");
        break;
      }
      SetSize(to);
      if (rc = CheckSize("after a truncation"); rc != 0) break;
    }
    stop.store(true);
    poker.join();
    if (rc != 0) return rc;
    if (!poke_error.empty()) return Mismatch(absl::StrCat("status: ", poke_error));
    // The last truncation holds, for the daemon and for a read at the end.
    if (o_.daemon_check) {
      const std::string err = o_.daemon_check(model_, false);
      if (!err.empty()) return Mismatch(absl::StrCat("the daemon disagrees: ", err));
    }
    uint8_t byte;
    const ssize_t past = pread(fd_, &byte, 1, static_cast<off_t>(size()));
    if (past != 0) return Mismatch(absl::StrCat("pread at the end returned ", past, ", want 0"));
    return 0;
  }

  void ZeroModel(uint64_t off, uint64_t len) {
    if (off >= size()) return;
    std::fill_n(model_.begin() + static_cast<ptrdiff_t>(off), std::min(len, size() - off), 0);
  }

  int OpPunch() {
    const uint64_t off = PickOffset(size() + kPage);
    const uint64_t len = PickLength();
    Note(absl::StrCat("punch ", off, "+", len));
    if (fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                  static_cast<off_t>(len)) != 0) {
      return Errno("fallocate(PUNCH_HOLE|KEEP_SIZE)");
    }
    ZeroModel(off, len);
    return 0;
  }

  int OpZeroRange() {
    bool keep = o_.fixed_size || Chance(50);
    uint64_t len = std::min(PickLength(), o_.max_size);
    uint64_t off;
    if (keep) {
      off = PickOffset(size() + kPage);
    } else {
      off = PickOffset(std::min(size() + 2 * kPage, o_.max_size - len));
    }
    if (o_.fixed_size && Chance(50) && off + len <= size()) keep = false;  // a no-op growth
    Note(absl::StrCat("zero range ", off, "+", len, keep ? " KEEP_SIZE" : ""));
    const int mode = FALLOC_FL_ZERO_RANGE | (keep ? FALLOC_FL_KEEP_SIZE : 0);
    if (fallocate(fd_, mode, static_cast<off_t>(off), static_cast<off_t>(len)) != 0) {
      return Errno("fallocate(ZERO_RANGE)");
    }
    if (!keep && off + len > size()) SetSize(off + len);
    ZeroModel(off, len);
    return 0;
  }

  int OpAllocate() {
    const bool keep = Chance(30);
    const uint64_t len = std::min(PickLength(), o_.max_size);
    const uint64_t off = PickOffset(std::min(size() + 2 * kPage, o_.max_size - len));
    Note(absl::StrCat("allocate ", off, "+", len, keep ? " KEEP_SIZE" : ""));
    if (fallocate(fd_, keep ? FALLOC_FL_KEEP_SIZE : 0, static_cast<off_t>(off),
                  static_cast<off_t>(len)) != 0) {
      return Errno("fallocate(allocate)");
    }
    if (!keep && off + len > size()) SetSize(off + len);
    return 0;
  }

  int OpReopen() {
    const bool trunc = !o_.fixed_size && Chance(10);
    Note(trunc ? "close, reopen O_TRUNC" : "close, reopen");
    Unmap();
    if (close(fd_) != 0) return Errno("close");
    fd_ = open(o_.path.c_str(), O_RDWR | (trunc ? O_TRUNC : 0));
    if (fd_ < 0) return Errno("reopen");
    if (trunc) SetSize(0);
    return 0;
  }

  int DropCaches() {
    Note("close, drop_caches, stat, reopen");
    Unmap();
    if (close(fd_) != 0) return Errno("close");
    fd_ = -1;
    sync();
    const int proc = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
    if (proc >= 0) {
      if (write(proc, "3", 1) != 1) std::fprintf(stderr, "drop_caches refused\n");
      close(proc);
    }
    if (int rc = CheckPathSize("after drop_caches"); rc != 0) return rc;
    fd_ = open(o_.path.c_str(), O_RDWR);
    if (fd_ < 0) return Errno("reopen");
    return 0;
  }

  // 2-4 writers, each on its own slice of the file (its own descriptor or
  // the shared one), by pwrite or through a mapping.
  int OpConcurrent() {
    const uint64_t writers = 2 + Rand(3);
    if (size() < writers * 64) return OpWrite();
    const uint64_t slice = size() / writers;
    std::vector<std::vector<PlannedWrite>> plans(writers);
    for (uint64_t w = 0; w < writers; ++w) {
      const uint64_t base = w * slice;
      const uint64_t count = 3 + Rand(6);
      for (uint64_t k = 0; k < count; ++k) {
        const uint64_t len = 1 + Rand(std::min<uint64_t>(slice, 3 * kPage));
        const uint64_t off = base + Rand(slice - len + 1);
        plans[w].push_back({off, RandomBytes(len), Chance(25)});
      }
    }
    Note(absl::StrCat("concurrent writers x", writers, " in slices of ", slice));
    std::vector<int> results(writers, 0);
    std::vector<std::string> errors(writers);
    std::vector<std::thread> threads;
    for (uint64_t w = 0; w < writers; ++w) {
      threads.emplace_back([&, w] {
        int fd = w % 2 == 0 ? open(o_.path.c_str(), O_RDWR) : fd_;
        if (fd < 0) {
          errors[w] = absl::StrCat("open: ", std::strerror(errno));
          results[w] = 1;
          return;
        }
        for (const PlannedWrite& p : plans[w]) {
          if (p.via_mmap) {
            Mapping m;
            if (!Map(fd, p.offset, p.data.size(), true, &m)) {
              errors[w] = absl::StrCat("mmap: ", std::strerror(errno));
              results[w] = 1;
              break;
            }
            std::memcpy(m.at, p.data.data(), p.data.size());
            if (msync(m.base, m.length, MS_SYNC) != 0) {
              errors[w] = absl::StrCat("msync: ", std::strerror(errno));
              results[w] = 1;
              break;
            }
          } else if (pwrite(fd, p.data.data(), p.data.size(), static_cast<off_t>(p.offset)) !=
                     static_cast<ssize_t>(p.data.size())) {
            errors[w] = absl::StrCat("pwrite at ", p.offset, ": ", std::strerror(errno));
            results[w] = 1;
            break;
          }
        }
        if (fd != fd_) close(fd);
      });
    }
    for (std::thread& t : threads) t.join();
    for (uint64_t w = 0; w < writers; ++w) {
      if (results[w] != 0) return Mismatch(absl::StrCat("writer ", w, ": ", errors[w]));
      for (const PlannedWrite& p : plans[w]) {
        std::copy(p.data.begin(), p.data.end(), model_.begin() + static_cast<ptrdiff_t>(p.offset));
      }
    }
    return 0;
  }

  int VerifyAll(bool final) {
    Note("verify the whole file");
    if (int rc = CheckPathSize("at a verify"); rc != 0) return rc;
    constexpr uint64_t kChunk = 1 << 20;
    std::vector<uint8_t> buf(kChunk);
    for (uint64_t at = 0; at < size(); at += kChunk) {
      const uint64_t n = std::min(kChunk, size() - at);
      const ssize_t got = pread(fd_, buf.data(), n, static_cast<off_t>(at));
      if (got < 0) return Errno("pread (verify)");
      if (static_cast<uint64_t>(got) != n) {
        return Mismatch(absl::StrCat("verify: pread at ", at, " returned ", got, " of ", n));
      }
      if (int rc = Compare(buf.data(), at, n, "verify"); rc != 0) return rc;
    }
    const ssize_t past = pread(fd_, buf.data(), kPage, static_cast<off_t>(size()));
    if (past != 0) return Mismatch(absl::StrCat("pread at the end returned ", past, ", want 0"));
    if (o_.daemon_check) {
      const std::string err = o_.daemon_check(model_, final);
      if (!err.empty()) return Mismatch(absl::StrCat("the daemon disagrees: ", err));
    }
    return 0;
  }

  const ExerciserOptions& o_;
  std::mt19937_64 rng_;
  std::vector<uint8_t> model_;
  int fd_ = -1;
  uint64_t op_ = 0;
  std::deque<std::string> recent_;
  // A mapped store past the end since the size last changed.
  bool tail_written_ = false;
  uint8_t* held_ = nullptr;
  uint64_t held_length_ = 0;
};

}  // namespace

int RunExerciser(const ExerciserOptions& options) { return Exerciser(options).Run(); }

std::vector<uint8_t> LoadModel(const std::string& path, bool* ok) {
  std::vector<uint8_t> out;
  *ok = false;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return out;
  uint8_t buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.insert(out.end(), buf, buf + n);
  *ok = !std::ferror(f);
  std::fclose(f);
  return out;
}

std::string Sha256Hex(const std::vector<uint8_t>& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &len, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned int i = 0; i < len; ++i)
    absl::StrAppend(&hex, absl::Hex(digest[i], absl::kZeroPad2));
  return hex;
}

}  // namespace lazyram::testing
