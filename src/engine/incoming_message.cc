#include "engine/incoming_message.h"

namespace llmdd {

IncomingMessage::State IncomingMessage::Feed(ByteStream &stream, bool with_body, uint64_t max_body,
                                             std::string *error) {
  if (start_failed_ != IoStatus::kOk) {  // StartSoon's read ended the stream; the socket may not say so again
    const IoStatus failed = start_failed_;
    start_failed_ = IoStatus::kOk;
    if (failed == IoStatus::kClosed) return State::kClosed;
    *error = IoStatusName(failed);
    return State::kInvalid;
  }
  while (header_got_ < sizeof(header_)) {
    size_t got = 0;
    const IoStatus io =
        stream.ReadAvailable(reinterpret_cast<char *>(&header_) + header_got_, sizeof(header_) - header_got_, &got);
    if (io == IoStatus::kClosed) return State::kClosed;
    if (io != IoStatus::kOk) {
      *error = IoStatusName(io);
      return State::kInvalid;
    }
    if (got == 0) return State::kPartial;
    header_got_ += got;
  }
  if (!header_checked_) {  // the header may also have come whole through StartSoon
    std::string bad = wire::CheckHeader(header_, stream.ProtocolVersion());
    // An ignorable message's body (bounded by CheckHeader) is read whole, for the caller to skip.
    if (bad.empty() && with_body && header_.body_len > max_body && !wire::IsIgnorable(header_.type))
      bad = "message body of " + std::to_string(header_.body_len) + " bytes exceeds " + std::to_string(max_body);
    if (!bad.empty()) {
      *error = bad;
      return State::kInvalid;
    }
    header_checked_ = true;
    if (with_body) body_.assign(header_.body_len, '\0');
  }
  if (!with_body) return State::kComplete;
  while (body_got_ < body_.size()) {
    size_t got = 0;
    const IoStatus io = stream.ReadAvailable(&body_[body_got_], body_.size() - body_got_, &got);
    if (io == IoStatus::kClosed) return State::kClosed;
    if (io != IoStatus::kOk) {
      *error = IoStatusName(io);
      return State::kInvalid;
    }
    if (got == 0) return State::kPartial;
    body_got_ += got;
  }
  return State::kComplete;
}

bool IncomingMessage::StartSoon(ByteStream &stream) {
  if (header_got_ > 0) return true;
  size_t got = 0;
  const IoStatus io = stream.ReadSoon(&header_, sizeof(header_), &got);
  header_got_ = got;
  if (got == 0 && io != IoStatus::kOk) start_failed_ = io;
  return got > 0 || io != IoStatus::kOk;
}

void IncomingMessage::Reset() {
  header_got_ = 0;
  header_checked_ = false;
  start_failed_ = IoStatus::kOk;
  body_got_ = 0;
  std::string().swap(body_);
}

}  // namespace llmdd
