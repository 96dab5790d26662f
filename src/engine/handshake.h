// Connection set-up shared by both ends: every connection starts with
// Hello -> HelloAck (or Error). See docs/PROTOCOL.md.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "adxl/adxl_types.h"
#include "common/deadline.h"
#include "common/endpoint.h"
#include "engine/wire.h"
#include "transport/shm/cma.h"
#include "transport/stream.h"

namespace llmdd {

// Connects to `remote`, sends `hello`, authenticates (mutual HMAC-SHA256
// challenge-response, when `secret` is set on either side: the client proves
// first, then checks the server's proof before it accepts the HelloAck), waits
// for the ack, all within the deadline. The Hello offers this engine's
// protocol versions; the connection then carries the one the server picked
// (ByteStream::ProtocolVersion), and *ack holds only capabilities `hello`
// offered. On failure returns nullptr with *status
// (FAILED, TIMEOUT or the peer's refusal code) and *error; FAILED, naming
// both, when the server picks a version this engine did not offer.
// `opening`, when given, is told the connection as soon as it is connected
// (before the handshake) and null before the call returns: shutting it down
// meanwhile ends the handshake at once (FAILED), e.g. when the request the
// lane was being opened for is canceled.
std::shared_ptr<ByteStream> OpenPeerConnection(const Endpoint &remote, const wire::Hello &hello,
                                               const std::string &secret, Deadline deadline, wire::HelloAck *ack,
                                               adxl::Status *status, std::string *error,
                                               const std::function<void(ByteStream *)> &opening = nullptr);

// Server side, after ReadHello when a secret is configured: sends a challenge
// (a nonce only), checks the client's proof and only then sends the server's
// own proof (AuthConfirm). False (with *error) if the client cannot prove it
// knows the secret; by then it has received nothing derived from the secret
// and nothing about this engine.
bool AuthenticateClient(ByteStream &stream, const wire::Hello &hello, const std::string &secret, Deadline deadline,
                        std::string *error);

// The two halves of AuthenticateClient for an event-driven server: the
// challenge (keep *server_nonce), then, once the client's answer (header and
// proof) has arrived, its check and the server's own proof.
bool SendAuthChallenge(ByteStream &stream, const wire::Hello &hello, Deadline deadline, std::string *server_nonce,
                       std::string *error);
bool CheckAuthAnswer(ByteStream &stream, const wire::Hello &hello, const std::string &secret,
                     const std::string &server_nonce, const wire::MsgHeader &header, const std::string &proof,
                     Deadline deadline, std::string *error);

// Server side: reads the first message, which must be a Hello.
bool ReadHello(ByteStream &stream, Deadline deadline, wire::Hello *hello, std::string *error);
// The same check and decoding of a Hello that has already arrived whole.
bool ParseHello(const wire::MsgHeader &header, const std::string &body, wire::Hello *hello, std::string *error);
// Server side, after the Hello (and authentication): refuses (FAILED, with the
// reason, logged; the stream is shut down; returns false) a Hello that shares
// no protocol version with this engine or names another engine
// (TargetIsThisEngine); otherwise drops unknown capability bits, and the
// same-host offer of a client below version 2, and returns true.
bool AdmitHello(ByteStream &stream, wire::Hello *hello, const std::string &local_id, Deadline deadline);
// Whether a client that asked for `target` reached this engine (`local_id`);
// *why when not. Only LLM-DataDist cluster ids (decimal numbers) are compared;
// an ADXL id is an address, and reaching the address is reaching the engine
// (docs/PROTOCOL.md "Which engine a client reached").
bool TargetIsThisEngine(const std::string &target, const std::string &local_id, std::string *why);
// Answers an admitted `hello` with `ack`, granting only the capabilities of
// `ack` that the client offered, and the negotiated version; from then on the
// stream carries that version.
bool SendHelloAck(ByteStream &stream, const wire::Hello &hello, wire::HelloAck ack, Deadline deadline);
// Refuses a connection with a status and a reason; best effort.
void SendRefusal(ByteStream &stream, adxl::Status status, const std::string &reason, Deadline deadline);

// Same-host identity of this process, for Hello (OpenPeerConnection adds the
// descriptor of the connection) / HelloAck (on `connection`).
void FillIdentity(wire::Hello *hello);
void FillIdentity(wire::HelloAck *ack, const ByteStream &connection);
// The peer's identity as carried by a Hello / HelloAck.
ProcessIdentity IdentityOf(const wire::Hello &hello);
ProcessIdentity IdentityOf(const wire::HelloAck &ack);

// Small control messages without payload (Ping/Pong/Goodbye/GoodbyeAck).
bool SendControl(ByteStream &stream, wire::MsgType type, uint64_t request_id, Deadline deadline);
// A control message with a status and a body (Notify, NotifyAck), at the
// stream's protocol version, in one write.
bool SendControlBody(ByteStream &stream, wire::MsgType type, adxl::Status status, uint64_t request_id,
                     const std::string &body, Deadline deadline);
// Reads one control message; returns its header in *header. False on I/O or
// protocol failure with *io set (kOk for a protocol violation) and *error.
// The header must carry the stream's ProtocolVersion().
bool ReadControl(ByteStream &stream, Deadline deadline, wire::MsgHeader *header, IoStatus *io, std::string *error);

// The serving side of an established connection got a message of an
// ignorable type it does not know (wire::IsIgnorable, header already checked):
// SkipIgnorable reads and drops its body, then, like AnswerIgnorable (for a
// body already read), answers Error{UNSUPPORTED} when it carries a request id.
// False when the stream failed (the connection must end).
bool SkipIgnorable(ByteStream &stream, const wire::MsgHeader &header, Deadline deadline);
bool AnswerIgnorable(ByteStream &stream, const wire::MsgHeader &header, Deadline deadline);

}  // namespace llmdd
