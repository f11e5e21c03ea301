// Writes the fuzzers' seed corpora under DIR/<target>/ (committed as
// tests/fuzz/corpus/): a handful of valid inputs made with the real
// encoders, each in the input format its fuzzer's header describes.
//
//   fuzz_seeds DIR
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "daemon/protocol/protocol.h"
#include "tests/qemu_stream_builder.h"

namespace lazyram {
namespace {

namespace p = protocol;

void Write(const std::filesystem::path& dir, const std::string& name, const std::string& bytes) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary) << bytes;
}

std::string Mode(int mode, const std::string& rest) { return std::string(1, char(mode)) + rest; }

std::string Body(const std::string& frame) { return frame.substr(p::kHeaderSize); }

std::string Pages(uint32_t count, uint64_t first_page, bool with_zero) {
  std::string pages(size_t{count} * p::kPageSize, '\0');
  for (uint32_t i = 0; i < count; ++i) {
    if (with_zero && i % 2 == 1) continue;
    for (size_t b = 0; b < p::kPageSize; b += 64) pages[i * p::kPageSize + b] = char(i + b + 1);
  }
  std::string frame;
  p::AppendPages(7, 1, first_page, count,
                 {reinterpret_cast<const uint8_t*>(pages.data()), pages.size()}, &frame);
  return frame;
}

void ProtocolSeeds(const std::filesystem::path& dir) {
  std::string hello, welcome, read, error;
  p::AppendHello({}, &hello);
  p::Welcome w;
  w.regions.push_back({"mem0", 1 << 20, {{0, 16}, {100, 20}}});
  w.regions.push_back({"pc.ram", 3 * 4096 + 100, {}});
  p::AppendWelcome(w, &welcome);
  p::AppendRead(42, {.region = 1, .count = 8, .first_page = 64, .priority = p::Priority::kBulk},
                &read);
  p::AppendError(42, {p::ErrorCode::kOutOfRange, "pages past the end"}, &error);
  const std::string pages = Pages(4, 10, true);

  Write(dir, "header", Mode(0, read.substr(0, p::kHeaderSize)));
  Write(dir, "hello", Mode(1, Body(hello)));
  Write(dir, "welcome", Mode(2, Body(welcome)));
  Write(dir, "read", Mode(3, Body(read)));
  Write(dir, "pages", Mode(4, Body(pages)));
  Write(dir, "pages_all_data", Mode(4, Body(Pages(2, 0, false))));
  Write(dir, "error", Mode(5, Body(error)));
  // count-1, region (3 bytes), first page (8 bytes), then page shapes.
  Write(dir, "encode",
        Mode(6, std::string("\x03\x01\0\0\x05\0\0\0\0\0\0\0", 12) +
                    std::string("\x00\x01\x0f\xff\x07\x05"
                                "abcdefg\x00",
                                14)));
  std::string challenge, auth, auth_ok;
  p::Challenge c;
  c.server_nonce.fill(0x11);
  p::AppendChallenge(c, &challenge);
  p::AuthRequest a;
  a.client_nonce.fill(0x22);
  a.proof.fill(0x33);
  p::AppendAuth(a, &auth);
  p::AuthOk ok;
  ok.proof.fill(0x44);
  p::AppendAuthOk(ok, &auth_ok);
  Write(dir, "challenge", Mode(8, Body(challenge)));
  Write(dir, "auth", Mode(9, Body(auth)));
  Write(dir, "auth_ok", Mode(10, Body(auth_ok)));
  Write(dir, "client_auth_stream", Mode(7, hello + auth + read));
  Write(dir, "server_auth_stream", Mode(7, challenge + auth_ok + welcome + pages));
  Write(dir, "client_stream", Mode(7, hello + read + read));
  Write(dir, "server_stream", Mode(7, welcome + pages + error));
}

void ControlSeeds(const std::filesystem::path& dir) {
  const std::vector<std::pair<std::string, std::string>> lines = {
      {"status", R"({"cmd":"status"})"},
      {"prefetch", R"({"cmd":"prefetch","region":"mem0"})"},
      {"prefetch_range", R"({"cmd":"prefetch","region":"mem0","offset":4096,"length":8192})"},
      {"prefetch_past_end", R"({"cmd":"prefetch","region":"pc.ram","offset":12288,"length":1})"},
      {"hash", R"({"cmd":"hash","region":"pc.ram"})"},
      {"hash_nowait", R"({"cmd":"hash","region":"mem0","wait":false})"},
      {"hash_poll", R"({"cmd":"hash","region":"mem0","poll":true})"},
      {"unmount", R"({"cmd":"unmount"})"},
      {"unknown", R"({"cmd":"frobnicate","region":[1,2,{"a":null}]})"},
  };
  std::string all;
  for (const auto& [name, line] : lines) {
    Write(dir, name, Mode(0, line + "\n"));
    all += line + "\n";
  }
  Write(dir, "many_lines", Mode(0, all + "not json\n[1]\n\n"));
  // Structured mode: FuzzedDataProvider bytes.
  Write(dir, "structured_a", Mode(1, std::string("\x02\x01\x02\x03\x00\x01\x02mem0\x03\x01", 14)));
  Write(dir, "structured_b", Mode(1, std::string(32, '\x05')));
}

void QemuStreamSeeds(const std::filesystem::path& dir) {
  using testing::QemuStreamBuilder;
  const std::string page_a(4096, 'a'), page_b(4096, 'b');
  QemuStreamBuilder one;
  one.Header().RamStart({{"pc.ram", 4 * 4096}, {"/rom@etc/acpi/tables", 4096}});
  one.RamPart().Page("pc.ram", 0, page_a).Zero("pc.ram", 4096, 7).Eos();
  one.RamPart(true).Page("pc.ram", 0, page_b).Page("/rom@etc/acpi/tables", 0, page_a).Eos();
  one.Device("timer", std::string(8, '\x01')).End();
  Write(dir, "two_blocks", one.bytes());

  QemuStreamBuilder small;
  small.Header("pc-q35-7.2").RamStart({{"mem0", 4096 + 10}});
  small.RamPart(true).Zero("mem0", 0).Page("mem0", 4096, page_a).Eos().End();
  Write(dir, "partial_page", small.bytes());
}

}  // namespace
}  // namespace lazyram

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seeds DIR\n");
    return 2;
  }
  const std::filesystem::path dir = argv[1];
  lazyram::ProtocolSeeds(dir / "protocol");
  lazyram::ControlSeeds(dir / "control");
  lazyram::QemuStreamSeeds(dir / "qemu_stream");
  return 0;
}
