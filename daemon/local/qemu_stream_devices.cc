#include "daemon/local/qemu_stream_devices.h"

#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/str_cat.h"
#include "daemon/local/qemu_stream_format.h"

namespace lazyram {
namespace {

namespace qs = qemu_stream;
using Json = nlohmann::json;

struct Field {
  size_t at = 0;      // offset in `sections`
  size_t length = 0;  // all its elements
  const Json* desc = nullptr;
};

class Walker {
 public:
  explicit Walker(absl::string_view s) : s_(s) {}

  bool Has(size_t n) const { return pos_ + n <= s_.size(); }
  uint8_t U8(size_t at) const { return static_cast<uint8_t>(s_[at]); }
  uint64_t Be(size_t at, size_t n) const {
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v = v << 8 | U8(at + i);
    return v;
  }

  // Fields then subsections of one vmsd description, from pos_.
  absl::Status Body(const Json& desc, std::map<std::string, Field>* out, int depth = 0) {
    if (depth > 8) return absl::InvalidArgumentError("subsections nested too deep");
    // References into `desc` (not value(), which copies): out keeps them.
    static const Json kEmpty = Json::array();
    const Json& fields = desc.contains("fields") ? desc["fields"] : kEmpty;
    for (const Json& f : fields) {
      if (!f.contains("size") || !f["size"].is_number_unsigned()) {
        return absl::InvalidArgumentError(
            absl::StrCat("field '", f.value("name", "?"), "' has no size"));
      }
      const uint64_t size = f["size"].get<uint64_t>();
      const uint64_t count = f.value("array_len", uint64_t{1});
      if (size > s_.size() || count > s_.size() || !Has(size * count)) {
        return absl::DataLossError("device state shorter than its description");
      }
      const uint64_t n = size * count;
      std::string name = f.value("name", "");
      if (f.contains("index")) name += absl::StrCat("[", f["index"].get<int64_t>(), "]");
      out->emplace(name, Field{pos_, n, &f});
      pos_ += n;
    }
    for (const Json& sub : desc.contains("subsections") ? desc["subsections"] : kEmpty) {
      const std::string name = sub.value("vmsd_name", "");
      if (!Has(2) || U8(pos_) != qs::kSubsection || !Has(2 + U8(pos_ + 1) + 4) ||
          s_.substr(pos_ + 2, U8(pos_ + 1)) != name) {
        return absl::InvalidArgumentError(
            absl::StrCat("subsection '", name, "' is not where the description puts it"));
      }
      pos_ += 2 + U8(pos_ + 1) + 4;
      if (absl::Status s = Body(sub, out, depth + 1); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  absl::string_view s_;
  size_t pos_ = 0;
};

}  // namespace

absl::StatusOr<StreamDevices> ParseStreamDevices(absl::string_view sections,
                                                 absl::string_view vmdesc) {
  const Json desc = Json::parse(vmdesc.begin(), vmdesc.end(), nullptr, false);
  if (!desc.is_object() || !desc.contains("devices") || !desc["devices"].is_array()) {
    return absl::InvalidArgumentError("the device description is not QEMU's JSON");
  }
  StreamDevices out;
  Walker w(sections);
  try {
    for (const Json& dev : desc["devices"]) {
      const std::string name = dev.value("name", "");
      const uint64_t instance = dev.value("instance_id", uint64_t{0});
      // kSectionFull be32 id  u8 len  idstr  be32 instance  be32 version
      const size_t at = w.pos_;
      if (!w.Has(6) || w.U8(at) != qs::kSectionFull || !w.Has(6 + w.U8(at + 5) + 8) ||
          sections.substr(at + 6, w.U8(at + 5)) != name ||
          w.Be(at + 6 + w.U8(at + 5), 4) != instance) {
        return absl::InvalidArgumentError(absl::StrCat("device section ", out.sections, " is not '",
                                                       name, "' as the description says"));
      }
      w.pos_ += 6 + w.U8(at + 5) + 8;
      std::map<std::string, Field> fields;
      if (absl::Status s = w.Body(dev, &fields); !s.ok()) {
        return absl::Status(s.code(), absl::StrCat("device '", name, "': ", s.message()));
      }
      if (w.Has(5) && w.U8(w.pos_) == qs::kFooter) w.pos_ += 5;
      ++out.sections;

      auto get = [&](const char* field, size_t offset, size_t size) -> std::optional<uint64_t> {
        auto it = fields.find(field);
        // Within the field only: the description may lie about its size.
        if (it == fields.end() || offset + size > it->second.length) return std::nullopt;
        return w.Be(it->second.at + offset, size);
      };
      if (name == "cpu") {
        X86CpuState cpu;
        cpu.index = static_cast<uint32_t>(instance);
        auto regs = fields.find("env.regs");
        if (regs == fields.end() || regs->second.desc->value("array_len", 0) != 16 ||
            regs->second.desc->value("size", 0) != 8) {
          return absl::InvalidArgumentError("cpu: no 16 64-bit env.regs (not x86_64?)");
        }
        for (int i = 0; i < 16; ++i) cpu.regs[i] = get("env.regs", 8 * i, 8).value_or(0);
        cpu.rip = get("env.eip", 0, 8).value_or(0);
        cpu.rflags = get("env.eflags", 0, 8).value_or(0);
        auto seg = [&](const char* field, size_t i, X86Segment* out_seg) {
          // vmstate_segment: be32 selector, be64 base, be32 limit, be32 flags
          out_seg->selector = static_cast<uint32_t>(get(field, 20 * i, 4).value_or(0));
          out_seg->base = get(field, 20 * i + 4, 8).value_or(0);
          out_seg->limit = static_cast<uint32_t>(get(field, 20 * i + 12, 4).value_or(0));
          out_seg->flags = static_cast<uint32_t>(get(field, 20 * i + 16, 4).value_or(0));
        };
        for (size_t i = 0; i < 6; ++i) seg("env.segs", i, &cpu.segs[i]);
        seg("env.ldt", 0, &cpu.ldt);
        seg("env.tr", 0, &cpu.tr);
        seg("env.gdt", 0, &cpu.gdt);
        seg("env.idt", 0, &cpu.idt);
        for (int i : {0, 2, 3, 4}) {
          cpu.cr[i] = get(absl::StrCat("env.cr[", i, "]").c_str(), 0, 8).value_or(0);
        }
        cpu.kernel_gs_base = get("env.kernelgsbase", 0, 8).value_or(0);
        out.cpus.push_back(cpu);
      } else if (name == "vmcoreinfo") {
        // FWCfgVMCoreInfo: guest_format 1 = an ELF note.
        if (get("has_vmcoreinfo", 0, 1).value_or(0) == 1 &&
            get("vmcoreinfo.guest_format", 0, 2).value_or(0) == 1) {
          out.vmcoreinfo_paddr = get("vmcoreinfo.paddr", 0, 8);
        }
      }
    }
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("the device description: ", e.what()));
  }
  if (w.pos_ != sections.size()) {
    return absl::InvalidArgumentError(absl::StrCat("the device sections end at byte ", w.pos_,
                                                   " of ", sections.size(),
                                                   " (more than described)"));
  }
  return out;
}

}  // namespace lazyram
