#include "daemon/control/control_request.h"

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "daemon/control/control_server.h"

namespace lazyram {

std::string AnswerControlRequest(absl::string_view received, ControlHandler* handler) {
  nlohmann::json reply;
  const absl::string_view line = received.substr(0, received.find('\n'));
  if (line.size() > kMaxControlRequest) {
    reply = ErrorReply(absl::InvalidArgumentError("request too large"));
  } else {
    nlohmann::json parsed = nlohmann::json::parse(line.begin(), line.end(), nullptr,
                                                  /*allow_exceptions=*/false);
    if (parsed.is_discarded() || !parsed.is_object()) {
      reply = ErrorReply(absl::InvalidArgumentError("request is not a JSON object"));
    } else {
      reply = handler->Handle(parsed);
    }
  }
  // Names in a reply (regions, paths) are whatever bytes the kernel or a
  // page server allowed; the serializer throws on bytes that are not UTF-8
  // unless told to replace them, and a throw here would end the daemon.
  return reply.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace lazyram
