// IncomingMessage: assembles one message (its header, then optionally its
// body) from whatever has arrived on a connection, without waiting. The
// event-driven serving side feeds it each time the connection is readable, so
// a peer that sends half a message holds a small buffer, never a thread.
#pragma once

#include <cstdint>
#include <string>

#include "engine/wire.h"
#include "transport/stream.h"

namespace llmdd {

class IncomingMessage {
 public:
  enum class State {
    kPartial,   // more bytes needed: wait for the next readable event
    kComplete,  // Header() (and Body() when asked for) are whole
    kClosed,    // the peer closed the connection (or it was shut down)
    kInvalid,   // bad header, body over the bound, or an I/O error: *error says which
  };

  // Takes what has arrived. with_body: also the header's body, which must not
  // exceed max_body (checked before anything is allocated for it), or, for an
  // ignorable message type (wire::IsIgnorable), wire::kMaxControlBody.
  State Feed(ByteStream &stream, bool with_body, uint64_t max_body, std::string *error);
  // Before Feed, between messages: waits the stream's short spin for the next
  // message's first bytes and keeps them (ByteStream::ReadSoon). True when
  // Feed has something to do: bytes came, or the stream ended or failed (Feed
  // reports it); false when nothing came (wait for the next readable event).
  bool StartSoon(ByteStream &stream);
  const wire::MsgHeader &Header() const { return header_; }
  const std::string &Body() const { return body_; }
  // Ready for the next message (the body's buffer is released).
  void Reset();
  // Bytes of the current message received so far.
  uint64_t Received() const { return header_got_ + body_got_; }

 private:
  wire::MsgHeader header_{};
  size_t header_got_ = 0;
  bool header_checked_ = false;
  IoStatus start_failed_ = IoStatus::kOk;  // what StartSoon's read ended with, for Feed to report
  std::string body_;
  size_t body_got_ = 0;
};

}  // namespace llmdd
