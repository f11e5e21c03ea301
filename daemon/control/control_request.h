// AnswerControlRequest: the pure part of the control socket — one request
// as the client sent it in, one reply line out — with no socket in sight,
// so the parse/validate/dispatch path can be unit-tested and fuzzed
// (tests/fuzz/control_fuzzer.cc). docs/control.md describes the requests.
//
// Thread-safety: as safe as `handler`; the function keeps no state.
#ifndef LAZYRAM_DAEMON_CONTROL_CONTROL_REQUEST_H_
#define LAZYRAM_DAEMON_CONTROL_CONTROL_REQUEST_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace lazyram {

class ControlHandler;

// Requests (up to their newline) longer than this are refused unparsed.
inline constexpr size_t kMaxControlRequest = 64 * 1024;

// `received` is what the client sent, up to and perhaps past the first
// '\n' (what follows it is ignored). Returns the reply: one JSON object and
// a '\n' — the handler's answer, or {"ok":false,"code":"INVALID_ARGUMENT",...}
// for a request that is too large, not JSON, or not an object.
std::string AnswerControlRequest(absl::string_view received, ControlHandler* handler);

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_CONTROL_CONTROL_REQUEST_H_
