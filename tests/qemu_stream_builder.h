// QemuStreamBuilder: writes small QEMU 7.2 migration streams for tests, in
// the format of daemon/local/qemu_stream_format.h, so the indexer can be checked
// against streams with re-sent pages, fill pages, damage and truncation
// without running QEMU. Header-only; test code only.
#ifndef LAZYRAM_TESTS_QEMU_STREAM_BUILDER_H_
#define LAZYRAM_TESTS_QEMU_STREAM_BUILDER_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "daemon/local/qemu_stream_format.h"

namespace lazyram::testing {

class QemuStreamBuilder {
 public:
  QemuStreamBuilder& U8(uint8_t v) {
    out_.push_back(static_cast<char>(v));
    return *this;
  }
  QemuStreamBuilder& Be32(uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) U8(static_cast<uint8_t>(v >> s));
    return *this;
  }
  QemuStreamBuilder& Be64(uint64_t v) {
    Be32(static_cast<uint32_t>(v >> 32));
    return Be32(static_cast<uint32_t>(v));
  }
  QemuStreamBuilder& Str(const std::string& s) {  // u8 length + bytes
    U8(static_cast<uint8_t>(s.size()));
    out_ += s;
    return *this;
  }
  QemuStreamBuilder& Raw(const std::string& s) {
    out_ += s;
    return *this;
  }

  // Magic, version and the configuration section naming `machine`.
  QemuStreamBuilder& Header(const std::string& machine = "pc-i440fx-7.2") {
    Be32(qemu_stream::kFileMagic).Be32(qemu_stream::kFileVersion);
    U8(qemu_stream::kConfiguration).Be32(static_cast<uint32_t>(machine.size()));
    out_ += machine;
    return *this;
  }
  // The RAM section's START: the RAMBlock list, then EOS and the footer.
  QemuStreamBuilder& RamStart(const std::vector<std::pair<std::string, uint64_t>>& blocks,
                              uint32_t id = 2) {
    U8(qemu_stream::kSectionStart).Be32(id).Str("ram").Be32(0).Be32(4);
    uint64_t total = 0;
    for (const auto& b : blocks) total += b.second;
    Be64(total | qemu_stream::kMemSize);
    for (const auto& [name, size] : blocks) Str(name).Be64(size);
    return Eos(id);
  }
  // Opens a PART (or, with `end`, the END) of the RAM section.
  QemuStreamBuilder& RamPart(bool end = false, uint32_t id = 2) {
    U8(end ? qemu_stream::kSectionEnd : qemu_stream::kSectionPart).Be32(id);
    last_block_.clear();
    return *this;
  }
  QemuStreamBuilder& Page(const std::string& block, uint64_t offset, const std::string& bytes) {
    Record(block, offset, qemu_stream::kPage);
    out_ += bytes;
    return *this;
  }
  QemuStreamBuilder& Zero(const std::string& block, uint64_t offset, uint8_t fill = 0) {
    Record(block, offset, qemu_stream::kZero);
    return U8(fill);
  }
  // Ends the open RAM part: EOS and the footer.
  QemuStreamBuilder& Eos(uint32_t id = 2) {
    Be64(qemu_stream::kEos);
    return U8(qemu_stream::kFooter).Be32(id);
  }
  // A device section QEMU would not let us skip by length.
  QemuStreamBuilder& Device(const std::string& name, const std::string& state, uint32_t id = 3) {
    U8(qemu_stream::kSectionFull).Be32(id).Str(name).Be32(0).Be32(1);
    out_ += state;
    return U8(qemu_stream::kFooter).Be32(id);
  }
  QemuStreamBuilder& End(const std::string& vmdesc = "{\"page_size\": 4096, \"devices\": []}") {
    U8(qemu_stream::kEof);
    U8(qemu_stream::kVmDescription).Be32(static_cast<uint32_t>(vmdesc.size()));
    out_ += vmdesc;
    return *this;
  }

  const std::string& bytes() const { return out_; }
  std::string& mutable_bytes() { return out_; }

 private:
  void Record(const std::string& block, uint64_t offset, uint64_t flag) {
    const bool same = block == last_block_;
    Be64(offset | flag | (same ? qemu_stream::kContinue : 0));
    if (!same) Str(block);
    last_block_ = block;
  }

  std::string out_;
  std::string last_block_;
};

}  // namespace lazyram::testing

#endif  // LAZYRAM_TESTS_QEMU_STREAM_BUILDER_H_
