#include "daemon/control_request.h"

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "daemon/control_server.h"

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
  return reply.dump() + "\n";
}

}  // namespace lazyram
