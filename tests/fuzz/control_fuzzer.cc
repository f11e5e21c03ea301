// libFuzzer target for the control socket: what a local client can send,
// through AnswerControlRequest (the socket server's parse/validate step)
// into a real mount's dispatch (MountControl::Handle) — no source, memfd
// stores, three regions created as a RAM-backing consumer would make them.
//
// Even first byte: the rest is raw bytes, split on '\n' into request lines
// (and once unsplit, as one client's whole send). Odd first byte: the rest
// drives FuzzedDataProvider to build a JSON request — known and unknown
// commands, keys and values of every JSON type, offsets and lengths around
// the region sizes — serialized as a client would send it.
//
// Every reply must be one line holding a JSON object with "ok"; a failure
// carries "code" (one of the canonical codes this engine can give) and an
// "error" string (docs/control.md). Anything else aborts.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "daemon/control/control_request.h"
#include "daemon/core/region.h"
#include "daemon/engine/engine.h"

namespace lazyram {
namespace {

#define FUZZ_CHECK(cond)                                                            \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)

// Region names: two ordinary ones, and one that is not UTF-8 (a consumer of
// a RAM-backing mount may create any file name the kernel allows).
const char* const kRegionNames[] = {"mem0", "pc.ram", "odd\xff\xfe"};
constexpr uint64_t kMem0Size = 64 * 1024 + 100;  // a partial last page
constexpr uint64_t kPcRamSize = 3 * 4096;

void Wait(absl::AnyInvocable<void(Region::Done)> start) {
  absl::Notification done;
  absl::Status status;
  start([&](absl::Status s) {
    status = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  FUZZ_CHECK(status.ok());
}

// Built once; lives until the process exits (never destroyed, so the hash
// threads it starts never outlive it).
Engine* TheEngine() {
  static Engine* engine = [] {
    absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create(Engine::Options{});
    FUZZ_CHECK(e.ok());
    for (const char* name : kRegionNames) FUZZ_CHECK((*e)->CreateRegion(name).ok());
    Region* mem0 = (*e)->region(0);
    std::vector<uint8_t> bytes(kMem0Size);
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7 + 1);
    Wait([&](Region::Done done) { mem0->Write(0, bytes, std::move(done)); });
    Wait([&](Region::Done done) { mem0->Punch(8192, 8192, std::move(done)); });
    FUZZ_CHECK((*e)->region(1)->Resize(kPcRamSize).ok());
    (*e)->control()->SetUnmountHandler([] { return absl::OkStatus(); });
    return e->release();
  }();
  return engine;
}

bool KnownErrorCode(const std::string& code) {
  // What a mount without a source can answer (docs/control.md).
  for (absl::StatusCode c :
       {absl::StatusCode::kInvalidArgument, absl::StatusCode::kNotFound,
        absl::StatusCode::kOutOfRange, absl::StatusCode::kFailedPrecondition}) {
    if (code == absl::StatusCodeToString(c)) return true;
  }
  return false;
}

// Checks one reply line; returns it parsed.
nlohmann::json CheckReply(const std::string& line) {
  FUZZ_CHECK(!line.empty() && line.back() == '\n');
  FUZZ_CHECK(line.find('\n') == line.size() - 1);  // exactly one line
  nlohmann::json reply = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  FUZZ_CHECK(!reply.is_discarded() && reply.is_object());
  auto ok = reply.find("ok");
  FUZZ_CHECK(ok != reply.end() && ok->is_boolean());
  if (!ok->get<bool>()) {
    auto code = reply.find("code");
    auto error = reply.find("error");
    FUZZ_CHECK(code != reply.end() && code->is_string());
    FUZZ_CHECK(error != reply.end() && error->is_string());
    if (!KnownErrorCode(code->get<std::string>())) {
      std::fprintf(stderr, "unexpected error code in reply: %s", line.c_str());
      std::abort();
    }
  }
  return reply;
}

// Checks what a request that succeeded answered.
void CheckSuccess(const nlohmann::json& request, const nlohmann::json& reply) {
  if (!reply["ok"].get<bool>()) return;
  const std::string cmd = request["cmd"].get<std::string>();
  if (cmd == "status") {
    FUZZ_CHECK(reply.contains("regions") && reply["regions"].is_array());
    FUZZ_CHECK(reply["regions"].size() == std::size(kRegionNames));
  } else if (cmd == "hash") {
    FUZZ_CHECK(reply.contains("running") && reply["running"].is_boolean());
    if (!reply["running"].get<bool>()) {
      FUZZ_CHECK(reply.contains("sha256") && reply["sha256"].is_string() &&
                 reply["sha256"].get<std::string>().size() == 64);
    }
  } else {
    FUZZ_CHECK(cmd == "prefetch" || cmd == "unmount");
  }
}

// The typed answer docs/control.md promises for requests whose outcome is
// known without running them: "" for success, else the error code.
std::optional<std::string> ExpectedOutcome(const nlohmann::json& request) {
  const std::string cmd = request["cmd"].get<std::string>();
  if (cmd != "status" && cmd != "prefetch" && cmd != "hash" && cmd != "unmount") {
    return "INVALID_ARGUMENT";
  }
  if (cmd == "status" || cmd == "unmount") return "";
  if (cmd != "prefetch") return std::nullopt;
  auto region = request.find("region");
  if (region == request.end() || !region->is_string()) return "INVALID_ARGUMENT";
  const bool has_offset = request.contains("offset"), has_length = request.contains("length");
  if ((has_offset && !request["offset"].is_number_unsigned()) ||
      (has_length && !request["length"].is_number_unsigned()) || has_offset != has_length) {
    return "INVALID_ARGUMENT";
  }
  uint64_t size;
  if (*region == "mem0") {
    size = kMem0Size;
  } else if (*region == "pc.ram") {
    size = kPcRamSize;
  } else {
    return "NOT_FOUND";  // the name that is not UTF-8 cannot be sent
  }
  if (!has_offset) return "";
  const uint64_t offset = request["offset"].get<uint64_t>();
  const uint64_t length = request["length"].get<uint64_t>();
  return offset > size || length > size - offset ? "OUT_OF_RANGE" : "";
}

void CheckOutcome(const nlohmann::json& request, const nlohmann::json& reply) {
  const std::optional<std::string> expected = ExpectedOutcome(request);
  if (!expected.has_value()) return;
  const std::string got = reply["ok"].get<bool>() ? "" : reply["code"].get<std::string>();
  if (got != *expected) {
    std::fprintf(stderr, "request %s: expected %s, got %s\n", request.dump().c_str(),
                 expected->empty() ? "ok" : expected->c_str(), reply.dump().c_str());
    std::abort();
  }
}

std::string Answer(absl::string_view received) {
  return AnswerControlRequest(received, TheEngine()->control());
}

void FuzzLines(absl::string_view in) {
  CheckReply(Answer(in));  // a client's whole send: only its first line counts
  for (int lines = 0; !in.empty() && lines < 64; ++lines) {
    const size_t nl = in.find('\n');
    const absl::string_view line = in.substr(0, nl);
    in = nl == absl::string_view::npos ? absl::string_view() : in.substr(nl + 1);
    const std::string reply = Answer(std::string(line) + "\n");
    CheckReply(reply);
    nlohmann::json request = nlohmann::json::parse(line.begin(), line.end(), nullptr, false);
    if (request.is_object() && request.contains("cmd") && request["cmd"].is_string()) {
      CheckSuccess(request, nlohmann::json::parse(reply));
      CheckOutcome(request, nlohmann::json::parse(reply));
    }
  }
}

nlohmann::json FuzzValue(FuzzedDataProvider& p, int depth);

// A byte count near something interesting: region sizes, page edges,
// the largest uint64.
uint64_t FuzzOffset(FuzzedDataProvider& p) {
  const uint64_t bases[] = {0, 4096, 8192, kPcRamSize, kMem0Size, 1ull << 32, UINT64_MAX};
  const uint64_t base = bases[p.ConsumeIntegralInRange<size_t>(0, std::size(bases) - 1)];
  const int64_t delta = p.ConsumeIntegralInRange<int64_t>(-4097, 4097);
  return base + static_cast<uint64_t>(delta);  // wraps on purpose
}

std::string FuzzString(FuzzedDataProvider& p) {
  switch (p.ConsumeIntegralInRange(0, 3)) {
    case 0:
      return kRegionNames[p.ConsumeIntegralInRange<size_t>(0, std::size(kRegionNames) - 1)];
    case 1:  // long enough to pass the request limit now and then
      return std::string(p.ConsumeIntegralInRange<size_t>(0, 70000), 'x');
    default:
      return p.ConsumeRandomLengthString(64);
  }
}

nlohmann::json FuzzValue(FuzzedDataProvider& p, int depth) {
  switch (p.ConsumeIntegralInRange(0, depth > 2 ? 6 : 8)) {
    case 0:
      return nullptr;
    case 1:
      return p.ConsumeBool();
    case 2:
      return FuzzOffset(p);
    case 3:
      return p.ConsumeIntegral<int64_t>();
    case 4:
      return p.ConsumeFloatingPoint<double>();
    case 5:
      return p.ConsumeIntegral<uint64_t>();
    case 6:
      return FuzzString(p);
    case 7: {
      nlohmann::json a = nlohmann::json::array();
      for (int n = p.ConsumeIntegralInRange(0, 3); n > 0; --n) a.push_back(FuzzValue(p, depth + 1));
      return a;
    }
    default: {
      nlohmann::json o = nlohmann::json::object();
      for (int n = p.ConsumeIntegralInRange(0, 3); n > 0; --n) {
        o[p.ConsumeRandomLengthString(8)] = FuzzValue(p, depth + 1);
      }
      return o;
    }
  }
}

void FuzzStructured(FuzzedDataProvider& p) {
  static const char* const kCommands[] = {"status", "prefetch", "hash", "unmount", "STATUS", ""};
  static const char* const kKeys[] = {"region", "offset", "length", "wait", "poll"};
  nlohmann::json request = nlohmann::json::object();
  switch (p.ConsumeIntegralInRange(0, 5)) {
    case 0:
      break;  // no cmd
    case 1:
      request["cmd"] = FuzzValue(p, 0);
      break;
    default:
      request["cmd"] = kCommands[p.ConsumeIntegralInRange<size_t>(0, std::size(kCommands) - 1)];
  }
  for (const char* key : kKeys) {
    switch (p.ConsumeIntegralInRange(0, 3)) {
      case 0:
        break;
      case 1:
        request[key] = FuzzValue(p, 0);
        break;
      default:  // the type the key wants
        if (absl::string_view(key) == "region") {
          request[key] = FuzzString(p);
        } else if (absl::string_view(key) == "offset" || absl::string_view(key) == "length") {
          request[key] = FuzzOffset(p);
        } else {
          request[key] = p.ConsumeBool();
        }
    }
  }
  for (int n = p.ConsumeIntegralInRange(0, 2); n > 0; --n) {
    request[p.ConsumeRandomLengthString(16)] = FuzzValue(p, 0);
  }
  // What a client puts on the wire; sometimes not an object at all.
  nlohmann::json sent = request;
  if (p.ConsumeIntegralInRange(0, 15) == 0) sent = nlohmann::json::array({request});
  const std::string line =
      sent.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  const nlohmann::json reply = CheckReply(Answer(line));
  if (line.size() - 1 > kMaxControlRequest) {
    FUZZ_CHECK(!reply["ok"].get<bool>());
    return;
  }
  const nlohmann::json received = nlohmann::json::parse(line);
  if (received.is_object() && received.contains("cmd") && received["cmd"].is_string()) {
    CheckSuccess(received, reply);
    CheckOutcome(received, reply);
  }
}

}  // namespace
}  // namespace lazyram

// A hash thread frees its OpenSSL context and buffer after it reports the
// run done (when the Wait below returns), so libFuzzer's leak check can catch
// them in flight and report a leak that is not one (seen in a 10-minute
// run). Those two allocations only; every other leak still counts.
extern "C" const char* __lsan_default_suppressions() {
  return "leak:CRYPTO_zalloc\nleak:lazyram::RegionHasher::Run\n";
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if (data[0] % 2 == 0) {
    lazyram::FuzzLines(absl::string_view(reinterpret_cast<const char*>(data) + 1, size - 1));
  } else {
    FuzzedDataProvider provider(data + 1, size - 1);
    lazyram::FuzzStructured(provider);
  }
  // A `hash` with "wait": false leaves its thread running; let it finish, so
  // one input's thread does not run into the next (or into libFuzzer's leak
  // check, which then reports its buffers as leaked).
  for (const char* name : lazyram::kRegionNames) lazyram::TheEngine()->hasher().Wait(name);
  return 0;
}
