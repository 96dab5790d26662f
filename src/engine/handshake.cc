#include "engine/handshake.h"

#include "common/endpoint.h"
#include "common/hmac.h"
#include "common/log.h"
#include "transport/fault_injection.h"
#include "transport/tcp/tcp_stream.h"

namespace llmdd {

using wire::MsgHeader;
using wire::MsgType;

namespace {

// `version`: kHandshakeVersion for the handshake's own messages, the
// connection's version for an Error (kHandshakeVersion too until HelloAck).
bool SendMessage(ByteStream &stream, MsgType type, adxl::Status status, const std::string &body, Deadline deadline,
                 uint64_t request_id = 0, uint16_t version = wire::kHandshakeVersion) {
  MsgHeader header;
  header.version = version;
  header.type = static_cast<uint16_t>(type);
  header.status = status;
  header.request_id = request_id;
  header.body_len = body.size();
  iovec out[2] = {{&header, sizeof(header)}, {const_cast<char *>(body.data()), body.size()}};
  return stream.WriteFull(out, 2, deadline) == IoStatus::kOk;
}

// Proofs bind the secret to both nonces of this connection and the client's id,
// so a recorded exchange cannot be replayed; the distinct labels keep a proof of
// one side from ever serving as the other side's.
std::string ServerProof(const std::string &secret, const std::string &client_nonce, const std::string &server_nonce,
                        const std::string &client_id) {
  return HmacSha256(secret, "llmdd-auth-v1 server|" + client_nonce + "|" + server_nonce + "|" + client_id);
}

std::string ClientProof(const std::string &secret, const std::string &client_nonce, const std::string &server_nonce,
                        const std::string &client_id) {
  return HmacSha256(secret, "llmdd-auth-v1 client|" + server_nonce + "|" + client_nonce + "|" + client_id);
}

constexpr size_t kNonceBytes = 32;

// Client side: the version the server picked (none said: a version-1 server)
// must be one we offered; the connection then carries it. Capabilities not
// offered or not known are dropped, and so is the same-host path below
// version 2 (version-1 same-host requests carry absolute CLOCK_MONOTONIC
// deadlines, which this engine neither sends nor trusts).
bool AcceptHelloAck(ByteStream &stream, const wire::Hello &sent, const std::string &remote, wire::HelloAck *ack,
                    std::string *error) {
  const uint16_t version = ack->version == 0 ? 1 : ack->version;
  if (version < sent.min_version || version > sent.max_version) {
    *error = ack->version == 0
                 ? remote + " speaks protocol version 1 only; this engine speaks " +
                       wire::VersionRange(sent.min_version, sent.max_version)
                 : remote + " chose protocol version " + std::to_string(version) + ", which this engine (" +
                       wire::VersionRange(sent.min_version, sent.max_version) + ") did not offer";
    return false;
  }
  stream.SetProtocolVersion(version);
  ack->capabilities &= sent.capabilities & wire::kKnownCapabilities;
  // Notify is an ignorable message type: never sent at version 1.
  if (version < 2) ack->capabilities &= ~wire::kCapNotify;
  if (version < wire::kSameHostMinVersion && (ack->pid != 0 || (ack->capabilities & wire::kCapSameHost) != 0)) {
    if (sent.role == wire::ConnRole::kControl)
      LOG_INFO("%s speaks protocol version %u: the same-host path is not used with it (TCP only)", remote.c_str(),
               static_cast<unsigned>(version));
    ack->capabilities &= ~wire::kCapSameHost;
    ack->pid = 0;
    ack->boot_id.clear();
    ack->token.clear();
  }
  return true;
}

}  // namespace

bool TargetIsThisEngine(const std::string &target, const std::string &local_id, std::string *why) {
  uint64_t wanted = 0, self = 0;
  // No claim (a peer that sends none), or an address: ADXL engine ids are the
  // engine's address, and the address the client reached is the engine, by
  // whatever name it reached it (docs/PROTOCOL.md "Which engine a client reached").
  if (target.empty() || !ParseUint64(target, &wanted)) return true;
  const bool self_is_cluster = ParseUint64(local_id, &self);
  if (self_is_cluster && self == wanted) return true;
  *why = self_is_cluster ? "wrong engine: this is LLM-DataDist cluster " + local_id +
                               ", the client asked for cluster " + target
                         : "wrong engine: this is ADXL engine " + local_id + ", not LLM-DataDist cluster " + target;
  return false;
}

bool AdmitHello(ByteStream &stream, wire::Hello *hello, const std::string &local_id, Deadline deadline) {
  std::string why;
  const uint16_t version = wire::NegotiateVersion(hello->min_version, hello->max_version);
  if (version == 0) {
    why = "no common protocol version: the client speaks " +
          wire::VersionRange(hello->min_version, hello->max_version) + ", engine " + local_id + " speaks " +
          wire::VersionRange(wire::kMinVersion, wire::kMaxVersion);
  } else {
    TargetIsThisEngine(hello->target_engine_id, local_id, &why);
  }
  if (!why.empty()) {
    LOG_WARN("refused connection from %s (engine '%s'): %s", stream.PeerName().c_str(), hello->engine_id.c_str(),
             why.c_str());
    SendRefusal(stream, adxl::FAILED, why, deadline);
    stream.Shutdown();
    return false;
  }
  hello->capabilities &= wire::kKnownCapabilities;  // unknown bits: ignored
  // Notify is an ignorable message type, which version 1 does not have.
  if (version < 2) hello->capabilities &= ~wire::kCapNotify;
  if (version < wire::kSameHostMinVersion) {
    // Version-1 same-host requests carry absolute CLOCK_MONOTONIC deadlines:
    // such a client is not offered the path (it uses TCP).
    hello->capabilities &= ~wire::kCapSameHost;
    hello->pid = 0;
    hello->boot_id.clear();
    hello->token.clear();
  }
  return true;
}

bool ReadControl(ByteStream &stream, Deadline deadline, MsgHeader *header, IoStatus *io, std::string *error) {
  *io = stream.Read(header, sizeof(*header), deadline);
  if (*io != IoStatus::kOk) {
    *error = IoStatusName(*io);
    return false;
  }
  std::string bad = wire::CheckHeader(*header, stream.ProtocolVersion());
  if (!bad.empty()) {
    *error = bad;
    return false;
  }
  return true;
}

std::shared_ptr<ByteStream> OpenPeerConnection(const Endpoint &remote, const wire::Hello &hello,
                                               const std::string &secret, Deadline deadline, wire::HelloAck *ack,
                                               adxl::Status *status, std::string *error,
                                               const std::function<void(ByteStream *)> &opening) {
  bool timed_out = false;
  std::shared_ptr<ByteStream> stream = MaybeInjectFaults(TcpStream::Connect(remote, deadline, &timed_out, error));
  if (!stream) {
    *status = timed_out ? adxl::TIMEOUT : adxl::FAILED;
    return nullptr;
  }
  // Published for the handshake only, and withdrawn on every way out (before
  // the stream can go): whoever holds it may shut it down meanwhile.
  struct Published {
    const std::function<void(ByteStream *)> &opening;
    ~Published() {
      if (opening) opening(nullptr);
    }
  } published{opening};
  if (opening) opening(stream.get());
  wire::Hello sent = hello;
  sent.min_version = wire::kMinVersion;
  sent.max_version = wire::kMaxVersion;
  if (!secret.empty()) sent.nonce = RandomBytes(kNonceBytes);
  // A same-host identity names the descriptor that holds this connection, so
  // the server can ask the kernel whether we hold its other end.
  if (sent.pid != 0 && stream->NativeHandle() >= 0) sent.conn_fd = static_cast<uint32_t>(stream->NativeHandle());
  if (!SendMessage(*stream, MsgType::kHello, adxl::SUCCESS, wire::EncodeHello(sent), deadline)) {
    *status = deadline.Expired() ? adxl::TIMEOUT : adxl::FAILED;
    *error = "sending hello to " + remote.ToString() + " failed";
    return nullptr;
  }
  // With a secret the answers must come in this order: AuthChallenge, (our
  // AuthResponse), AuthConfirm, HelloAck. Without one, only HelloAck. Error may
  // end it at any step.
  enum class Step { kAwaitChallenge, kAwaitConfirm, kAwaitAck };
  Step step = secret.empty() ? Step::kAwaitAck : Step::kAwaitChallenge;
  std::string server_nonce;
  for (;;) {
    MsgHeader header;
    IoStatus io = IoStatus::kOk;
    std::string why;
    if (!ReadControl(*stream, deadline, &header, &io, &why)) {
      *status = io == IoStatus::kTimeout ? adxl::TIMEOUT : adxl::FAILED;
      *error = "no valid answer to hello from " + remote.ToString() + ": " + why;
      return nullptr;
    }
    // Only these answers are possible here; anything else is refused before
    // its (bounded, but up to kMaxAppBody) body is allocated.
    const auto type = static_cast<MsgType>(header.type);
    if (type != MsgType::kError && type != MsgType::kAuthChallenge && type != MsgType::kAuthConfirm &&
        type != MsgType::kHelloAck) {
      *status = adxl::FAILED;
      *error = remote.ToString() + " answered hello with " + wire::MsgTypeName(header.type);
      return nullptr;
    }
    std::string body(header.body_len, '\0');
    io = stream->Read(body.data(), body.size(), deadline);
    if (io != IoStatus::kOk) {
      *status = io == IoStatus::kTimeout ? adxl::TIMEOUT : adxl::FAILED;
      *error = std::string("reading hello answer: ") + IoStatusName(io);
      return nullptr;
    }
    if (type == MsgType::kError) {
      *status = header.status != adxl::SUCCESS ? wire::SanitizePeerStatus(header.status) : adxl::FAILED;
      *error = remote.ToString() + " refused the connection: " + body;
      return nullptr;
    }
    *status = adxl::FAILED;  // for every refusal below
    if (type == MsgType::kAuthChallenge) {
      if (secret.empty()) {
        *error = remote.ToString() + " requires authentication: set the same llmdd.AuthSecret option or "
                 "LLMDD_AUTH_SECRET on both engines";
        return nullptr;
      }
      wire::AuthChallenge challenge;
      if (step != Step::kAwaitChallenge || !wire::DecodeAuthChallenge(body, &challenge) ||
          challenge.server_nonce.size() != kNonceBytes) {
        *error = remote.ToString() + " sent a malformed or repeated authentication challenge (a peer running "
                 "another revision of the protocol?)";
        return nullptr;
      }
      server_nonce = challenge.server_nonce;
      std::string proof = ClientProof(secret, sent.nonce, server_nonce, sent.engine_id);
      if (!SendMessage(*stream, MsgType::kAuthResponse, adxl::SUCCESS, proof, deadline)) {
        *status = deadline.Expired() ? adxl::TIMEOUT : adxl::FAILED;
        *error = "sending authentication to " + remote.ToString() + " failed";
        return nullptr;
      }
      step = Step::kAwaitConfirm;
      continue;
    }
    if (type == MsgType::kAuthConfirm) {
      if (step != Step::kAwaitConfirm) {
        *error = remote.ToString() + " sent an authentication confirmation before it was asked for one";
        return nullptr;
      }
      if (!ConstantTimeEqual(body, ServerProof(secret, sent.nonce, server_nonce, sent.engine_id))) {
        *error = remote.ToString() + " failed to prove it knows the shared secret";
        return nullptr;
      }
      step = Step::kAwaitAck;
      continue;
    }
    // HelloAck.
    if (step == Step::kAwaitChallenge) {
      *error = remote.ToString() + " did not authenticate itself (it has no shared secret configured)";
      return nullptr;
    }
    if (step == Step::kAwaitConfirm) {
      *error = remote.ToString() + " failed to prove it knows the shared secret (no proof before its HelloAck)";
      return nullptr;
    }
    if (!wire::DecodeHelloAck(body, ack)) {
      *error = remote.ToString() + " sent a malformed hello answer";
      return nullptr;
    }
    if (!AcceptHelloAck(*stream, sent, remote.ToString(), ack, error)) return nullptr;
    *status = adxl::SUCCESS;
    return stream;
  }
}

bool SendAuthChallenge(ByteStream &stream, const wire::Hello &hello, Deadline deadline, std::string *server_nonce,
                       std::string *error) {
  if (hello.nonce.size() != kNonceBytes) {
    *error = "peer did not offer authentication (no shared secret configured on it)";
    return false;
  }
  // The client proves first: until its proof checks out, it receives only a
  // random nonce, nothing derived from the secret that it could use for an
  // offline guessing attack.
  wire::AuthChallenge challenge;
  challenge.server_nonce = RandomBytes(kNonceBytes);
  if (!SendMessage(stream, MsgType::kAuthChallenge, adxl::SUCCESS, wire::EncodeAuthChallenge(challenge), deadline)) {
    *error = "cannot send the authentication challenge";
    return false;
  }
  *server_nonce = challenge.server_nonce;
  return true;
}

bool CheckAuthAnswer(ByteStream &stream, const wire::Hello &hello, const std::string &secret,
                     const std::string &server_nonce, const MsgHeader &header, const std::string &proof,
                     Deadline deadline, std::string *error) {
  if (header.type != static_cast<uint16_t>(MsgType::kAuthResponse) || proof.size() != header.body_len) {
    *error = "peer did not answer the authentication challenge";
    return false;
  }
  if (!ConstantTimeEqual(proof, ClientProof(secret, hello.nonce, server_nonce, hello.engine_id))) {
    *error = "wrong authentication proof (different shared secret)";
    return false;
  }
  // Only now does the server prove itself, so the client can refuse an
  // impostor before it trusts anything in HelloAck.
  const std::string server_proof = ServerProof(secret, hello.nonce, server_nonce, hello.engine_id);
  if (!SendMessage(stream, MsgType::kAuthConfirm, adxl::SUCCESS, server_proof, deadline)) {
    *error = "cannot send the authentication confirmation";
    return false;
  }
  return true;
}

bool AuthenticateClient(ByteStream &stream, const wire::Hello &hello, const std::string &secret, Deadline deadline,
                        std::string *error) {
  std::string server_nonce;
  if (!SendAuthChallenge(stream, hello, deadline, &server_nonce, error)) return false;
  MsgHeader header;
  IoStatus io = IoStatus::kOk;
  if (!ReadControl(stream, deadline, &header, &io, error)) return false;
  if (header.type != static_cast<uint16_t>(MsgType::kAuthResponse) || header.body_len > wire::kMaxAuthField) {
    *error = "peer did not answer the authentication challenge";
    return false;
  }
  std::string proof(header.body_len, '\0');
  if (stream.Read(proof.data(), proof.size(), deadline) != IoStatus::kOk) {
    *error = "authentication answer not received";
    return false;
  }
  return CheckAuthAnswer(stream, hello, secret, server_nonce, header, proof, deadline, error);
}

bool ParseHello(const MsgHeader &header, const std::string &body, wire::Hello *hello, std::string *error) {
  if (header.type != static_cast<uint16_t>(MsgType::kHello)) {
    *error = std::string("expected Hello, got ") + wire::MsgTypeName(header.type);
    return false;
  }
  if (!wire::DecodeHello(body, hello)) {
    *error = "malformed hello";
    return false;
  }
  return true;
}

bool ReadHello(ByteStream &stream, Deadline deadline, wire::Hello *hello, std::string *error) {
  MsgHeader header;
  IoStatus io = IoStatus::kOk;
  if (!ReadControl(stream, deadline, &header, &io, error)) return false;
  if (header.type != static_cast<uint16_t>(MsgType::kHello)) {
    *error = std::string("expected Hello, got ") + wire::MsgTypeName(header.type);
    return false;
  }
  std::string body(header.body_len, '\0');
  if (stream.Read(body.data(), body.size(), deadline) != IoStatus::kOk) {
    *error = "hello body not received";
    return false;
  }
  return ParseHello(header, body, hello, error);
}

bool SendHelloAck(ByteStream &stream, const wire::Hello &hello, wire::HelloAck ack, Deadline deadline) {
  ack.version = wire::NegotiateVersion(hello.min_version, hello.max_version);
  if (ack.version == 0) return false;  // AdmitHello refuses such a Hello first
  ack.capabilities = wire::NegotiateCapabilities(hello.capabilities, ack.capabilities);
  // Every later message on this connection carries the version; set before the
  // HelloAck (which is stamped with the handshake's own version) goes out, so
  // a lane published before its HelloAck (a reverse lane) never sends another.
  stream.SetProtocolVersion(ack.version);
  return SendMessage(stream, MsgType::kHelloAck, adxl::SUCCESS, wire::EncodeHelloAck(ack), deadline);
}

void SendRefusal(ByteStream &stream, adxl::Status status, const std::string &reason, Deadline deadline) {
  SendMessage(stream, MsgType::kError, status, reason.substr(0, wire::kMaxControlBody), deadline, 0,
              stream.ProtocolVersion());
}

void FillIdentity(wire::Hello *hello) {
  const ProcessIdentity &self = LocalIdentity();
  hello->boot_id = self.boot_id;
  hello->pid = self.pid;
  hello->token_addr = self.token_addr;
  hello->token = self.token;
}

void FillIdentity(wire::HelloAck *ack, const ByteStream &connection) {
  const ProcessIdentity &self = LocalIdentity();
  ack->boot_id = self.boot_id;
  ack->pid = self.pid;
  ack->token_addr = self.token_addr;
  ack->token = self.token;
  if (connection.NativeHandle() >= 0) ack->conn_fd = static_cast<uint32_t>(connection.NativeHandle());
}

ProcessIdentity IdentityOf(const wire::Hello &hello) {
  return ProcessIdentity{hello.boot_id, hello.pid, hello.token_addr, hello.token, hello.conn_fd};
}

ProcessIdentity IdentityOf(const wire::HelloAck &ack) {
  return ProcessIdentity{ack.boot_id, ack.pid, ack.token_addr, ack.token, ack.conn_fd};
}

bool AnswerIgnorable(ByteStream &stream, const wire::MsgHeader &header, Deadline deadline) {
  LOG_DEBUG("ignored message type %u from %s (%s)", static_cast<unsigned>(header.type), stream.PeerName().c_str(),
            header.request_id == 0 ? "a notification" : "answered UNSUPPORTED");
  if (header.request_id == 0) return true;
  return SendMessage(stream, MsgType::kError, adxl::UNSUPPORTED,
                     "message type " + std::to_string(header.type) + " is not supported by this engine", deadline,
                     header.request_id, stream.ProtocolVersion());
}

bool SkipIgnorable(ByteStream &stream, const wire::MsgHeader &header, Deadline deadline) {
  char sink[wire::kMaxControlBody];  // CheckHeader bounds an ignorable body to this, without payload
  if (header.body_len > sizeof(sink) || header.payload_len != 0) return false;
  if (header.body_len > 0 && stream.Read(sink, header.body_len, deadline) != IoStatus::kOk) return false;
  return AnswerIgnorable(stream, header, deadline);
}

bool SendControlBody(ByteStream &stream, MsgType type, adxl::Status status, uint64_t request_id,
                     const std::string &body, Deadline deadline) {
  return SendMessage(stream, type, status, body, deadline, request_id, stream.ProtocolVersion());
}

bool SendControl(ByteStream &stream, MsgType type, uint64_t request_id, Deadline deadline) {
  MsgHeader header;
  header.version = stream.ProtocolVersion();
  header.type = static_cast<uint16_t>(type);
  header.request_id = request_id;
  return stream.Write(&header, sizeof(header), deadline) == IoStatus::kOk;
}

}  // namespace llmdd
