// The frame header, the ERROR frame and the ErrorCode table: what every
// frame and both ends share. The handshake frames are in
// handshake_frames.cc, READ and PAGES in page_frames.cc.
#include "daemon/protocol/protocol.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "daemon/protocol/wire.h"

namespace lazyram::protocol {

using wire::AppendHeader;
using wire::Load;
using wire::Malformed;
using wire::Put;
using wire::Reader;
using wire::Store;
using wire::TrailingBytes;
using wire::Truncated;

namespace {

constexpr size_t kErrorFixedSize = 6;

// One row per ErrorCode: its name and the Status code a caller sees.
struct ErrorCodeInfo {
  ErrorCode code;
  std::string_view name;
  absl::StatusCode status;
};
constexpr ErrorCodeInfo kErrorCodes[] = {
    {ErrorCode::kBadRequest, "BAD_REQUEST", absl::StatusCode::kInvalidArgument},
    {ErrorCode::kBadVersion, "BAD_VERSION", absl::StatusCode::kFailedPrecondition},
    {ErrorCode::kNoSuchRegion, "NO_SUCH_REGION", absl::StatusCode::kNotFound},
    {ErrorCode::kOutOfRange, "OUT_OF_RANGE", absl::StatusCode::kOutOfRange},
    {ErrorCode::kIoError, "IO_ERROR", absl::StatusCode::kInternal},
    {ErrorCode::kBusy, "BUSY", absl::StatusCode::kResourceExhausted},
    {ErrorCode::kAuthRequired, "AUTH_REQUIRED", absl::StatusCode::kUnauthenticated},
    {ErrorCode::kAuthFailed, "AUTH_FAILED", absl::StatusCode::kUnauthenticated},
};

const ErrorCodeInfo* FindErrorCode(ErrorCode code) {
  for (const ErrorCodeInfo& info : kErrorCodes) {
    if (info.code == code) return &info;
  }
  return nullptr;
}

}  // namespace

// --- Header ------------------------------------------------------------------

void EncodeHeader(const FrameHeader& header, uint8_t out[kHeaderSize]) {
  Store<uint32_t>(out, header.body_len);
  out[4] = static_cast<uint8_t>(header.type);
  out[5] = header.flags;
  Store<uint16_t>(out + 6, 0);
  Store<uint64_t>(out + 8, header.tag);
}

absl::StatusOr<FrameHeader> DecodeHeader(std::span<const uint8_t> bytes, uint32_t max_body) {
  if (bytes.size() < kHeaderSize) {
    return Malformed("header", absl::StrCat("only ", bytes.size(), " bytes"));
  }
  FrameHeader header;
  header.body_len = Load<uint32_t>(bytes.data());
  const uint8_t type = bytes[4];
  header.flags = bytes[5];
  const uint16_t reserved = Load<uint16_t>(bytes.data() + 6);
  header.tag = Load<uint64_t>(bytes.data() + 8);
  // Frame types are numbered contiguously from kHello to kAuthOk.
  if (type < static_cast<uint8_t>(FrameType::kHello) ||
      type > static_cast<uint8_t>(FrameType::kAuthOk)) {
    return Malformed("header", absl::StrCat("unknown frame type ", type));
  }
  header.type = static_cast<FrameType>(type);
  if (reserved != 0) return Malformed("header", "reserved bits set");
  if (header.body_len > max_body) {
    return absl::ResourceExhaustedError(absl::StrCat("header: body of ", header.body_len,
                                                     " bytes exceeds the limit of ", max_body));
  }
  return header;
}

// --- ERROR -------------------------------------------------------------------

void AppendError(uint64_t tag, const ErrorReply& error, std::string* out) {
  const std::string_view message = std::string_view(error.message).substr(0, kMaxErrorMessage);
  out->reserve(out->size() + kHeaderSize + kErrorFixedSize + message.size());
  AppendHeader(FrameType::kError, tag, kErrorFixedSize + message.size(), out);
  Put(out, static_cast<uint32_t>(error.code));
  Put(out, static_cast<uint16_t>(message.size()));
  out->append(message);
}

absl::StatusOr<ErrorReply> DecodeError(std::span<const uint8_t> body) {
  constexpr absl::string_view kFrame = "ERROR";
  Reader r(body);
  uint32_t code = 0;
  uint16_t message_len = 0;
  std::span<const uint8_t> message;
  if (!r.Read(&code) || !r.Read(&message_len)) return Truncated(kFrame);
  if (message_len > kMaxErrorMessage) {
    return Malformed(kFrame, absl::StrCat("message is ", message_len, " bytes"));
  }
  if (!r.ReadBytes(message_len, &message)) return Truncated(kFrame);
  if (r.remaining() != 0) return TrailingBytes(kFrame, r.remaining());
  if (FindErrorCode(static_cast<ErrorCode>(code)) == nullptr) {
    return Malformed(kFrame, absl::StrCat("unknown code ", code));
  }
  return ErrorReply{
      .code = static_cast<ErrorCode>(code),
      .message = std::string(reinterpret_cast<const char*>(message.data()), message.size())};
}

// --- Error codes -------------------------------------------------------------

std::string_view ErrorCodeName(ErrorCode code) {
  const ErrorCodeInfo* info = FindErrorCode(code);
  return info != nullptr ? info->name : "UNKNOWN";
}

absl::Status ErrorToStatus(const ErrorReply& error) {
  const ErrorCodeInfo* info = FindErrorCode(error.code);
  const std::string_view name = ErrorCodeName(error.code);
  std::string message = absl::StrCat("page server: ", absl::string_view(name.data(), name.size()));
  if (!error.message.empty()) absl::StrAppend(&message, ": ", error.message);
  return absl::Status(info != nullptr ? info->status : absl::StatusCode::kUnknown, message);
}

}  // namespace lazyram::protocol
