#include "daemon/local/qemu_stream_index.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/base/errno_status.h"
#include "daemon/local/qemu_stream_format.h"
#include "daemon/local/stream_reader.h"
#include "daemon/protocol/region_name.h"

namespace lazyram {

namespace qs = qemu_stream;

namespace {

// Device state after the RAM section is small (RAM-like device memory is
// itself a RAMBlock); past this the end-of-stream check is skipped.
constexpr uint64_t kMaxTailCheck = 256 << 20;

}  // namespace

// One pass over the stream. Every error names the byte offset it was found
// at; the caller prefixes the stream's path.
class QemuStreamIndex::Parser {
 public:
  Parser(QemuStreamIndex* index, int fd, uint64_t size) : index_(index), fd_(fd), size_(size) {}

  absl::Status Run();

 private:
  absl::Status Corrupt(uint64_t at, absl::string_view what) {
    return absl::DataLossError(absl::StrCat("corrupt at byte ", at, ": ", what));
  }
  // The reader's sticky error, phrased for the user.
  absl::Status ReadError(absl::string_view where) {
    if (absl::IsDataLoss(reader_->status())) {
      return absl::DataLossError(absl::StrCat("truncated: ", reader_->status().message(), " (",
                                              where, "); was the migration cut short?"));
    }
    return reader_->status();
  }
  absl::StatusOr<uint64_t> SkipLibvirtHeader();
  absl::Status ParseConfiguration();
  absl::Status ParseRam(bool setup);
  absl::Status ParseBlockList(uint64_t total, uint64_t at);
  absl::Status ParseFooter(uint32_t section_id);
  absl::Status CheckTail(uint64_t at);

  QemuStreamIndex* const index_;
  const int fd_;
  const uint64_t size_;
  std::optional<StreamReader> reader_;
  std::optional<uint32_t> ram_section_;
  bool ram_complete_ = false;
  absl::flat_hash_map<std::string, uint32_t> blocks_;  // RAMBlock name -> region
  std::optional<uint32_t> current_block_;
};

absl::StatusOr<uint64_t> QemuStreamIndex::Parser::SkipLibvirtHeader() {
  char head[qs::kLibvirtHeaderSize];
  const ssize_t n = pread(fd_, head, sizeof head, 0);
  if (n < 0) return ErrnoStatus(errno, "reading the stream");
  if (static_cast<size_t>(n) < qs::kLibvirtMagicSize) return 0;
  if (std::memcmp(head, qs::kLibvirtPartialMagic, qs::kLibvirtMagicSize) == 0) {
    return absl::DataLossError("a libvirt save image that was never finished (LibvirtQemudPart)");
  }
  if (std::memcmp(head, qs::kLibvirtMagic, qs::kLibvirtMagicSize) != 0) return 0;
  if (static_cast<size_t>(n) < sizeof head) {
    return absl::DataLossError("truncated inside the libvirt save header");
  }
  uint32_t fields[5];  // version, data_len, was_running, compressed, cookie
  std::memcpy(fields, head + qs::kLibvirtMagicSize, sizeof fields);
  if (fields[3] != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a compressed libvirt save image (format ", fields[3],
        "): lazyram reads only raw images; decompress it (or save with save_image_format=raw)"));
  }
  return qs::kLibvirtHeaderSize + fields[1];
}

absl::Status QemuStreamIndex::Parser::Run() {
  absl::StatusOr<uint64_t> start = SkipLibvirtHeader();
  if (!start.ok()) return start.status();
  reader_.emplace(fd_, size_, *start);
  StreamReader& r = *reader_;
  const uint32_t magic = r.Be32();
  const uint32_t version = r.Be32();
  if (!r.ok() || magic != qs::kFileMagic) {
    return absl::InvalidArgumentError("not a QEMU migration stream (no QEVM magic at its start)");
  }
  if (version != qs::kFileVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("QEMU stream version ", version, " is not supported (only 3)"));
  }
  for (;;) {
    const uint64_t at = r.position();
    const uint8_t type = r.U8();
    if (!r.ok()) return ReadError("no end-of-stream marker");
    switch (type) {
      case qs::kConfiguration:
        if (absl::Status s = ParseConfiguration(); !s.ok()) return s;
        break;
      case qs::kSectionStart:
      case qs::kSectionFull: {
        const uint32_t id = r.Be32();
        const std::string idstr = r.Bytes(r.U8());
        r.Be32();  // instance id
        const uint32_t section_version = r.Be32();
        if (!r.ok()) return ReadError("in a section header");
        if (type == qs::kSectionFull) {
          // Device state: it has no length, but the RAM is all behind us.
          if (ram_complete_) return CheckTail(at);
          return Corrupt(at,
                         absl::StrCat("device section '", idstr,
                                      "' before the RAM section ended; lazyram cannot skip it"));
        }
        if (idstr != "ram") {
          return absl::InvalidArgumentError(absl::StrCat(
              "the stream has a '", idstr,
              "' section (block migration or dirty bitmaps?) that lazyram cannot index"));
        }
        if (ram_section_.has_value()) return Corrupt(at, "a second RAM section starts");
        if (section_version != qs::kRamSectionVersion) {
          return absl::InvalidArgumentError(
              absl::StrCat("RAM section version ", section_version, " is not supported (only 4)"));
        }
        ram_section_ = id;
        if (absl::Status s = ParseRam(/*setup=*/true); !s.ok()) return s;
        // QEMU lists the RAMBlocks first thing; without them there is nothing
        // to mount (and nothing later may refer to a block).
        if (blocks_.empty()) return Corrupt(at, "the RAM section lists no RAMBlocks");
        if (absl::Status s = ParseFooter(id); !s.ok()) return s;
        break;
      }
      case qs::kSectionPart:
      case qs::kSectionEnd: {
        const uint32_t id = r.Be32();
        if (!r.ok()) return ReadError("in a section header");
        if (!ram_section_.has_value() || id != *ram_section_) {
          return Corrupt(at, absl::StrCat("a part of section ", id, ", which never started"));
        }
        if (ram_complete_) return Corrupt(at, "RAM data after the RAM section ended");
        if (absl::Status s = ParseRam(/*setup=*/false); !s.ok()) return s;
        if (absl::Status s = ParseFooter(id); !s.ok()) return s;
        if (type == qs::kSectionEnd) ram_complete_ = true;
        break;
      }
      case qs::kCommand: {
        r.Be16();  // command
        const uint16_t len = r.Be16();
        r.Skip(len);
        if (!r.ok()) return ReadError("in a command");
        break;
      }
      case qs::kEof:
        if (!ram_complete_) {
          return Corrupt(at, ram_section_.has_value() ? "the stream ends before its RAM section"
                                                      : "the stream has no RAM section");
        }
        index_->stats_.indexed_bytes = r.position();
        return absl::OkStatus();
      default:
        return Corrupt(at, absl::StrFormat("unknown section type 0x%02x", type));
    }
  }
}

absl::Status QemuStreamIndex::Parser::ParseConfiguration() {
  StreamReader& r = *reader_;
  const uint32_t len = r.Be32();
  if (!r.ok()) return ReadError("in the configuration section");
  if (len > 256) return Corrupt(r.position() - 4, "machine name longer than 256 bytes");
  index_->machine_name_ = r.Bytes(len);
  // QEMU 7.2's configuration subsections.
  while (r.Peek() == qs::kSubsection) {
    const uint64_t at = r.position();
    r.U8();
    const std::string name = r.Bytes(r.U8());
    r.Be32();  // version
    if (!r.ok()) return ReadError("in the configuration section");
    if (name == "configuration/target-page-bits") {
      const uint32_t bits = r.Be32();
      if (r.ok() && bits != 12) {
        // Any u32 may be here: a shift by 32 or more would be undefined.
        const std::string page = bits < 32 ? absl::StrCat(uint64_t{1} << bits, "-byte")
                                           : absl::StrCat("2^", bits, "-byte");
        return absl::InvalidArgumentError(
            absl::StrCat("the stream uses ", page, " target pages; lazyram reads 4 KiB"));
      }
    } else if (name == "configuration/capabilities") {
      const uint32_t count = r.Be32();
      for (uint32_t i = 0; i < count && r.ok(); ++i) {
        if (r.Bytes(r.U8()) == "x-ignore-shared") {
          return absl::InvalidArgumentError(
              "the stream was made with x-ignore-shared: its shared RAM blocks are not in it "
              "(mount their RAM files with file:// instead)");
        }
      }
    } else if (name == "configuration/uuid") {
      r.Skip(16);
    } else {
      return Corrupt(at, absl::StrCat("unknown configuration subsection '", name, "'"));
    }
    if (!r.ok()) return ReadError("in the configuration section");
  }
  return absl::OkStatus();
}

absl::Status QemuStreamIndex::Parser::ParseRam(bool setup) {
  StreamReader& r = *reader_;
  Stats& stats = index_->stats_;
  for (;;) {
    const uint64_t at = r.position();
    const uint64_t word = r.Be64();
    if (!r.ok()) return ReadError("inside the RAM section");
    const uint64_t flags = word & qs::kFlagMask;
    const uint64_t addr = word & ~qs::kFlagMask;
    switch (flags & ~qs::kContinue) {
      case qs::kMemSize:
        if (!setup || !blocks_.empty()) return Corrupt(at, "a second RAMBlock list");
        if (absl::Status s = ParseBlockList(addr, at); !s.ok()) return s;
        continue;
      case qs::kEos:
        return absl::OkStatus();
      case qs::kZero:
      case qs::kPage:
        break;
      case qs::kXbzrle:
        return absl::InvalidArgumentError(
            "the stream has XBZRLE-encoded pages; make it without the xbzrle capability");
      case qs::kCompressPage:
        return absl::InvalidArgumentError(
            "the stream has compressed pages; make it without the compress capability");
      default:
        if (flags & qs::kHook) {
          return absl::InvalidArgumentError("the stream has RDMA records; lazyram cannot index it");
        }
        return Corrupt(at, absl::StrFormat("unknown RAM record flags 0x%x", flags));
    }
    if (!(flags & qs::kContinue)) {
      const std::string block = r.Bytes(r.U8());
      if (!r.ok()) return ReadError("inside the RAM section");
      auto it = blocks_.find(block);
      if (it == blocks_.end()) {
        return Corrupt(at, absl::StrCat("a page of RAMBlock '", block, "', which is not listed"));
      }
      current_block_ = it->second;
    } else if (!current_block_.has_value()) {
      return Corrupt(at, "a page continues a RAMBlock, but none came before");
    }
    const uint32_t region = *current_block_;
    std::vector<uint64_t>& pages = index_->pages_[region];
    const uint64_t page = addr / qs::kPageSize;
    if (page >= pages.size()) {
      return Corrupt(at, absl::StrCat("page offset ", addr, " is past the end of RAMBlock '",
                                      index_->block_names_[region], "'"));
    }
    if ((flags & ~qs::kContinue) == qs::kZero) {
      const uint8_t fill = r.U8();
      pages[page] = fill == 0 ? 0 : kFillBit | fill;
      ++stats.zero_records;
    } else {
      pages[page] = r.position();
      r.Skip(qs::kPageSize);
      ++stats.data_records;
    }
    if (!r.ok()) return ReadError("inside a RAM page");
  }
}

absl::Status QemuStreamIndex::Parser::ParseBlockList(uint64_t total, uint64_t at) {
  StreamReader& r = *reader_;
  // 8 bytes of index per page, allocated below: a corrupt (or absurd) total
  // must be an error here, not a failed allocation.
  if (total / qs::kPageSize >= index_->max_index_bytes_ / sizeof(uint64_t)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the stream declares ", total, " bytes of RAM; its index would need more than the ",
        index_->max_index_bytes_, " bytes of memory allowed"));
  }
  uint64_t sum = 0;
  while (sum < total) {
    const uint64_t block_at = r.position();
    std::string name = r.Bytes(r.U8());
    const uint64_t size = r.Be64();
    if (!r.ok()) return ReadError("in the RAMBlock list");
    if (name.empty() || size == 0 || size > total - sum) {
      return Corrupt(block_at, absl::StrCat("RAMBlock '", name, "' of ", size,
                                            " bytes does not fit the total of ", total));
    }
    if (blocks_.contains(name)) {
      return Corrupt(block_at, absl::StrCat("RAMBlock '", name, "' is listed twice"));
    }
    sum += size;
    std::string region_name = RegionNameFor(name);
    if (absl::Status s = ValidateRegionName(region_name); !s.ok()) {
      return Corrupt(block_at, s.message());
    }
    const uint32_t region = static_cast<uint32_t>(index_->regions_.size());
    blocks_[name] = region;
    index_->block_names_.push_back(std::move(name));
    index_->regions_.push_back({std::move(region_name), size, {}});
    index_->pages_.emplace_back((size + qs::kPageSize - 1) / qs::kPageSize, 0);
  }
  if (blocks_.empty()) return Corrupt(at, "an empty RAMBlock list");
  return absl::OkStatus();
}

absl::Status QemuStreamIndex::Parser::ParseFooter(uint32_t section_id) {
  StreamReader& r = *reader_;
  // Machines older than QEMU 2.4's send no footers.
  if (r.Peek() != qs::kFooter) return absl::OkStatus();
  const uint64_t at = r.position();
  r.U8();
  const uint32_t id = r.Be32();
  if (!r.ok()) return ReadError("in a section footer");
  if (id != section_id) {
    return Corrupt(at, absl::StrCat("the footer of section ", section_id, " names section ", id));
  }
  return absl::OkStatus();
}

absl::Status QemuStreamIndex::Parser::CheckTail(uint64_t at) {
  index_->stats_.indexed_bytes = at;
  if (size_ - at > kMaxTailCheck) return absl::OkStatus();
  std::string tail(size_ - at, '\0');
  for (size_t done = 0; done < tail.size();) {
    const ssize_t n =
        pread(fd_, tail.data() + done, tail.size() - done, static_cast<off_t>(at + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return ErrnoStatus(n < 0 ? errno : EIO, "reading the stream");
    done += static_cast<size_t>(n);
  }
  // QEMU ends the stream with kEof, then the device description:
  // kVmDescription be32 len json[len] (always, unless the machine was
  // started with suppress-vmdesc=on). Look for that from the back: the
  // JSON holds no NUL byte, so the first match is the real one.
  const size_t end = tail.size();
  for (size_t i = end >= 8 ? end - 8 : 0; i + 8 <= end; --i) {
    if (tail[i] == qs::kEof && static_cast<uint8_t>(tail[i + 1]) == qs::kVmDescription &&
        tail[i + 6] == '{') {
      const auto* p = reinterpret_cast<const uint8_t*>(tail.data() + i + 2);
      const uint64_t len = uint64_t{p[0]} << 24 | uint64_t{p[1]} << 16 | uint64_t{p[2]} << 8 | p[3];
      if (i + 6 + len == end) {
        index_->devices_ = ParseStreamDevices(absl::string_view(tail).substr(0, i),
                                              absl::string_view(tail).substr(i + 6, len));
        return absl::OkStatus();
      }
      break;
    }
    if (i == 0) break;
  }
  return absl::DataLossError(absl::StrCat(
      "truncated: the RAM is complete, but the device state that follows it (from byte ", at,
      ") does not end with QEMU's end-of-stream marker and device description; was the "
      "migration cut short?"));
}

std::string QemuStreamIndex::RegionNameFor(absl::string_view block) {
  std::string out;
  for (char c : block) {
    if (c == '%') {
      out += "%25";
    } else if (c == '/') {
      out += "%2F";
    } else {
      out += c;
    }
  }
  return out;
}

uint64_t QemuStreamIndex::DefaultMaxIndexBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return UINT64_MAX;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size);
}

absl::StatusOr<std::unique_ptr<QemuStreamIndex>> QemuStreamIndex::Open(absl::string_view path,
                                                                       uint64_t max_index_bytes) {
  std::unique_ptr<QemuStreamIndex> index(new QemuStreamIndex(std::string(path)));
  index->max_index_bytes_ = max_index_bytes;
  index->fd_.reset(open(index->path_.c_str(), O_RDONLY | O_CLOEXEC));
  if (!index->fd_.valid()) {
    return ErrnoStatus(errno, absl::StrCat("cannot open QEMU stream ", path));
  }
  struct stat st;
  if (fstat(index->fd_.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", path));
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("QEMU stream ", path, " is not a regular file (a pipe cannot be indexed)"));
  }
  index->stats_.stream_bytes = static_cast<uint64_t>(st.st_size);
  posix_fadvise(index->fd_.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  Parser parser(index.get(), index->fd_.get(), index->stats_.stream_bytes);
  if (absl::Status s = parser.Run(); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("QEMU stream ", path, ": ", s.message()));
  }
  // Pages never sent, or sent as zero, are known zero from the start.
  for (size_t r = 0; r < index->regions_.size(); ++r) {
    const std::vector<uint64_t>& pages = index->pages_[r];
    auto& extents = index->regions_[r].zero_extents;
    for (uint64_t p = 0; p < pages.size();) {
      if (pages[p] != 0) {
        ++p;
        continue;
      }
      uint64_t q = p;
      while (q < pages.size() && pages[q] == 0) ++q;
      extents.push_back({p, q - p});
      p = q;
    }
  }
  posix_fadvise(index->fd_.get(), 0, 0, POSIX_FADV_RANDOM);
  return index;
}

PageLocation QemuStreamIndex::Locate(uint32_t region, uint64_t page) const {
  const uint64_t entry = pages_[region][page];
  PageLocation loc;
  if (entry == 0) return loc;
  if (entry & kFillBit) {
    loc.kind = PageLocation::Kind::kFill;
    loc.fill = static_cast<uint8_t>(entry);
    return loc;
  }
  loc.kind = PageLocation::Kind::kFile;
  loc.fd = fd_.get();
  loc.offset = entry;
  const uint64_t size = regions_[region].size;
  loc.length =
      static_cast<uint32_t>(std::min<uint64_t>(qs::kPageSize, size - page * qs::kPageSize));
  return loc;
}

}  // namespace lazyram
