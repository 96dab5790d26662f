// fuzz_handshake: connection set-up with an untrusted peer, on both ends.
//
// Input layout:
//   byte 0    flags: bit 0  a shared secret is configured on the side under test
//                    bit 1  client side (else server side)
//   byte 1..  the bytes the peer sends.
//
// Server side (socketpair): what PeerServer's handlers do with a new
// connection, message by message as it arrives (IncomingMessage): ParseHello,
// SendAuthChallenge / CheckAuthAnswer when a secret is set, refusals,
// HelloAck, then control messages (Ping -> Pong, Goodbye -> GoodbyeAck,
// Notify -> ServeNotify into a small NotifyInbox -> NotifyAck, ignorable ones)
// until the stream ends or breaks the protocol.
// Client side (loopback TCP, the harness accepts and plays the server):
// OpenPeerConnection, which sends Hello and decodes AuthChallenge /
// AuthConfirm / HelloAck / Error answers.
//
// Both sides also run the same-host check on the identity the peer announced
// (PeerProcess::Verify, as PeerServer::RunControl and Channel::Open do). A peer
// may know another process's identity (boot id, pid, token address and token
// travel in Hello / HelloAck), so these values can be named in the input:
// boot_id or token "@self", pid 0xFFFFFFFF, token_addr 0xADD1000000000000
// stand for this process's own values.
//
// Checked besides ASan/UBSan/hangs: with a secret, authentication never
// succeeds on either side (both sides draw fresh random nonces, so no input can
// carry a valid proof) and the server never sends a peer its proof
// (AuthConfirm) nor anything but a nonce in its challenge (see
// CheckNothingProvedToAnUnauthenticatedPeer); the same-host check passes only
// for the process that holds the other end of the connection (see
// CheckSameHost); whatever is accepted respects the decoder bounds; the
// notify inbox never holds more than its caps (2 per link, 8 KiB in all) and
// every Notify is answered with a NotifyAck of a documented status.
#include <arpa/inet.h>
#include <poll.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/log.h"
#include "engine/incoming_message.h"
#include "engine/handshake.h"
#include "engine/notify_inbox.h"
#include "engine/wire.h"
#include "fuzz_common.h"
#include "transport/shm/cma.h"
#include "transport/tcp/tcp_stream.h"

using namespace llmdd;

namespace {

const std::string kSecret = "fuzz-shared-secret";
bool g_debug = false;  // LLMDD_FUZZ_DEBUG=1: keep the engine's log, print each outcome
int g_listen_fd = -1;
int g_listen_port = 0;

// The identity a peer announced, with the names of this process's own values
// (which the peer learned from our Hello / HelloAck) replaced by those values.
ProcessIdentity ClaimedIdentity(ProcessIdentity id) {
  const ProcessIdentity &self = LocalIdentity();
  if (id.boot_id == "@self") id.boot_id = self.boot_id;
  if (id.pid == 0xFFFFFFFFu) id.pid = self.pid;
  if (id.token_addr == 0xADD1000000000000ULL) id.token_addr = self.token_addr;
  if (id.token == "@self") id.token = self.token;
  return id;
}

// Same-host verification of the peer's identity, as the engine does it. The
// peer here is only bytes: no process behind it put a token anywhere, so the
// check may pass only for the process that really holds the other end of the
// connection. On the server side that is nobody (a socketpair fed by a
// thread has no TCP ends); on the client side the harness itself accepted the
// connection, so this process truthfully holds it and may be verified.
// (Passing for any other pid means the check can be satisfied with public or
// guessable data: the engine would then let same-host copies read the named
// process's memory at addresses the peer chooses.)
void CheckSameHost(const ProcessIdentity &announced, const ByteStream &connection, bool harness_holds_peer_end,
                   const char *side) {
  if (announced.Empty()) return;
  const ProcessIdentity claimed = ClaimedIdentity(announced);
  std::string why;
  const bool reachable = PeerProcess::Verify(claimed, connection, &why) != nullptr;
  if (g_debug) fprintf(stderr, "  %s: same-host %s %s\n", side, reachable ? "verified" : "refused:", why.c_str());
  const bool truthful = harness_holds_peer_end && claimed.pid == static_cast<uint32_t>(getpid());
  FUZZ_CHECK(!reachable || truthful,
             "%s verified the same-host identity announced by a peer that is only bytes (pid %u%s, token at "
             "0x%llx): same-host copies would then read that process's memory at addresses the peer chooses",
             side, claimed.pid, claimed.pid == static_cast<uint32_t>(getpid()) ? " = this process" : "",
             static_cast<unsigned long long>(claimed.token_addr));
}

// What the server sent to a peer that never proved it knows the secret: no
// message may carry the server's proof (AuthConfirm), and the challenge may
// carry nothing but the nonce; otherwise a peer gets material to test guesses
// of the secret against offline.
void CheckNothingProvedToAnUnauthenticatedPeer(const std::string &sent) {
  size_t off = 0;
  while (sent.size() - off >= sizeof(wire::MsgHeader)) {
    wire::MsgHeader header;
    memcpy(&header, sent.data() + off, sizeof(header));
    off += sizeof(header);
    FUZZ_CHECK(header.type != static_cast<uint16_t>(wire::MsgType::kAuthConfirm),
               "the server sent its proof to a peer that has not proved it knows the secret");
    if (header.type == static_cast<uint16_t>(wire::MsgType::kAuthChallenge) && header.body_len <= sent.size() - off) {
      wire::AuthChallenge challenge;
      const std::string body = sent.substr(off, header.body_len);
      FUZZ_CHECK(wire::DecodeAuthChallenge(body, &challenge) && body.size() == sizeof(uint32_t) + 32,
                 "AuthChallenge of %zu bytes: it must carry the 32-byte nonce and nothing else", body.size());
    }
    const size_t left = sent.size() - off;
    if (header.body_len > left || header.payload_len > left - header.body_len) break;
    off += header.body_len + header.payload_len;
  }
}

// What the event-driven server does between two readable events, in a loop:
// feeds what arrived to `incoming` until a whole message is there (as
// PeerServer's handlers do), waiting in poll() for at most `ms`.
IncomingMessage::State NextMessage(IncomingMessage &incoming, TcpStream &stream, bool with_body, uint64_t max_body,
                                   int ms, std::string *error) {
  const Deadline deadline = Deadline::AfterMs(ms);
  for (;;) {
    IncomingMessage::State state = incoming.Feed(stream, with_body, max_body, error);
    if (state != IncomingMessage::State::kPartial) return state;
    if (deadline.Expired()) return IncomingMessage::State::kClosed;  // the handshake deadline
    pollfd ready{stream.NativeHandle(), POLLIN, 0};
    poll(&ready, 1, deadline.RemainingMsForPoll());
  }
}

void ServeHandshake(const uint8_t *data, size_t size, bool with_secret) {
  int fds[2];
  if (!fuzz::SocketPair(fds)) abort();
  std::string sent_to_peer;
  fuzz::PeerFeeder peer(fds[1], data, size, with_secret ? &sent_to_peer : nullptr);
  TcpStream stream(fds[0], "fuzz-peer");
  wire::Hello hello;
  std::string error;
  IncomingMessage incoming;
  // PeerServer::OnHandshakeMessage, stage Hello.
  IncomingMessage::State state =
      NextMessage(incoming, stream, /*with_body=*/true, wire::kMaxControlBody, 2000, &error);
  bool ok = state == IncomingMessage::State::kComplete &&
            ParseHello(incoming.Header(), incoming.Body(), &hello, &error);
  if (state == IncomingMessage::State::kComplete) {
    FUZZ_CHECK(incoming.Body().size() <= wire::kMaxControlBody, "hello body over its bound assembled");
  }
  incoming.Reset();
  if (g_debug) fprintf(stderr, "  server: Hello %s %s\n", ok ? "ok" : "failed:", error.c_str());
  if (!ok) {
    FUZZ_CHECK(state != IncomingMessage::State::kComplete || !error.empty(), "hello refused without a reason");
    SendRefusal(stream, adxl::PARAM_INVALID, error, Deadline::AfterMs(200));
  } else {
    const uint32_t role = static_cast<uint32_t>(hello.role);
    FUZZ_CHECK(role >= 1 && role <= 3, "role %u accepted", role);
    FUZZ_CHECK(hello.engine_id.size() <= wire::kMaxEngineIdLen && hello.nonce.size() <= wire::kMaxAuthField,
               "oversized hello field accepted");
    if (with_secret) {
      // Stage AuthAnswer: the challenge, then the answer once it has arrived whole.
      std::string server_nonce;
      ok = SendAuthChallenge(stream, hello, Deadline::AfterMs(2000), &server_nonce, &error);
      if (ok) {
        state = NextMessage(incoming, stream, /*with_body=*/true, wire::kMaxAuthField, 2000, &error);
        ok = state == IncomingMessage::State::kComplete &&
             CheckAuthAnswer(stream, hello, kSecret, server_nonce, incoming.Header(), incoming.Body(),
                             Deadline::AfterMs(2000), &error);
        incoming.Reset();
      }
      if (g_debug) fprintf(stderr, "  server: authentication %s %s\n", ok ? "ok" : "failed:", error.c_str());
      FUZZ_CHECK(!ok, "a peer that cannot know the challenge passed authentication");
      SendRefusal(stream, adxl::FAILED, "authentication failed: " + error, Deadline::AfterMs(200));
    }
  }
  // What PeerServer::Admit checks next (the version range).
  if (ok) ok = AdmitHello(stream, &hello, "127.0.0.1:26000", Deadline::AfterMs(200));
  if (ok) {
    wire::HelloAck ack;
    ack.capabilities = wire::kCapReverseLanes | wire::kCapAppMessages;
    ack.session_id = 0x1234;
    ack.engine_id = "127.0.0.1:26000";
    if (hello.role == wire::ConnRole::kControl && hello.pid != 0) {
      CheckSameHost(IdentityOf(hello), stream, /*harness_holds_peer_end=*/false, "server");
      FillIdentity(&ack, stream);
    }
    if (SendHelloAck(stream, hello, ack, Deadline::AfterMs(2000))) {
      FUZZ_CHECK(stream.ProtocolVersion() >= wire::kMinVersion && stream.ProtocolVersion() <= wire::kMaxVersion &&
                     stream.ProtocolVersion() >= hello.min_version && stream.ProtocolVersion() <= hello.max_version,
                 "negotiated version %u outside a range", stream.ProtocolVersion());
      // PeerServer::OnControlMessage. Small caps, so that inputs reach them.
      constexpr uint32_t kPerLink = 2;
      constexpr uint64_t kInboxBytes = 8192;
      NotifyInbox inbox(kPerLink, kInboxBytes);
      for (int i = 0; i < 64; ++i) {
        state = NextMessage(incoming, stream, /*with_body=*/true, wire::kMaxNotifyBody, 2000, &error);
        if (state != IncomingMessage::State::kComplete) {
          FUZZ_CHECK(state != IncomingMessage::State::kInvalid || !error.empty(), "protocol error without a reason");
          if (state == IncomingMessage::State::kInvalid)
            SendRefusal(stream, adxl::PARAM_INVALID, error, Deadline::AfterMs(200));
          break;
        }
        const wire::MsgHeader header = incoming.Header();
        const bool notify = header.type == static_cast<uint16_t>(wire::MsgType::kNotify);
        const std::string body = notify ? incoming.Body() : std::string();
        incoming.Reset();
        FUZZ_CHECK(wire::CheckHeader(header, stream.ProtocolVersion()).empty(), "a bad header was assembled");
        FUZZ_CHECK(body.size() == header.body_len || !notify, "a Notify body was not assembled whole");
        FUZZ_CHECK(header.body_len <= wire::kMaxNotifyBody || wire::IsIgnorable(header.type),
                   "a control message with a %llu-byte body was assembled",
                   static_cast<unsigned long long>(header.body_len));
        if (g_debug) fprintf(stderr, "  server: control message %s\n", wire::MsgTypeName(header.type));
        if (notify) {
          const size_t before = inbox.Size();
          if (!ServeNotify(stream, header, body, inbox, 0x1234, "fuzz-peer", "127.0.0.1:26000",
                           Deadline::AfterMs(2000)))
            break;
          FUZZ_CHECK(inbox.Size() <= kPerLink && inbox.Bytes() <= kInboxBytes,
                     "the inbox holds %zu notifies of %llu bytes", inbox.Size(),
                     static_cast<unsigned long long>(inbox.Bytes()));
          wire::Notify decoded;
          FUZZ_CHECK(inbox.Size() <= before + 1, "one Notify stored more than one notify");
          FUZZ_CHECK(inbox.Size() == before || wire::DecodeNotify(body, &decoded), "a malformed Notify was stored");
          if (i % 8 == 7) {  // GetNotifies now and then: room again
            std::vector<wire::Notify> taken;
            inbox.TakeAll(&taken);
            for (const wire::Notify &n : taken)
              FUZZ_CHECK(n.name.size() <= wire::kMaxNotifyField && n.message.size() <= wire::kMaxNotifyField,
                         "a notify over the field bound was stored");
          }
          continue;
        }
        if (wire::IsIgnorable(header.type)) {  // its body was assembled: answered, the session stays
          if (!AnswerIgnorable(stream, header, Deadline::AfterMs(2000))) break;
          continue;
        }
        if (header.type == static_cast<uint16_t>(wire::MsgType::kPing)) {
          if (!SendControl(stream, wire::MsgType::kPong, header.request_id, Deadline::AfterMs(2000))) break;
        } else {
          if (header.type == static_cast<uint16_t>(wire::MsgType::kGoodbye))
            SendControl(stream, wire::MsgType::kGoodbyeAck, header.request_id, Deadline::AfterMs(1000));
          break;
        }
      }
    }
  }
  stream.Shutdown();
  peer.Join();
  if (with_secret) CheckNothingProvedToAnUnauthenticatedPeer(sent_to_peer);
}

void ClientHandshake(const uint8_t *data, size_t size, bool with_secret) {
  fuzz::PeerFeeder server(-1, data, size, nullptr, g_listen_fd);
  Endpoint remote;
  remote.ip = "127.0.0.1";
  remote.family = AF_INET;
  remote.port = g_listen_port;
  wire::Hello hello;
  hello.role = wire::ConnRole::kControl;
  hello.capabilities = wire::kCapReverseLanes | wire::kCapAppMessages;
  hello.lanes = 2;
  hello.heartbeat_interval_ms = 1000;
  hello.peer_timeout_ms = 10000;
  hello.engine_id = "127.0.0.1:26001";
  hello.target_engine_id = "127.0.0.1";
  FillIdentity(&hello);  // llmdd.Transport auto (the default) announces the same-host identity
  wire::HelloAck ack;
  adxl::Status status = adxl::SUCCESS;
  std::string error;
  std::shared_ptr<ByteStream> stream = OpenPeerConnection(remote, hello, with_secret ? kSecret : std::string(),
                                                          Deadline::AfterMs(2000), &ack, &status, &error);
  if (g_debug) fprintf(stderr, "  client: OpenPeerConnection status %u %s\n", status, error.c_str());
  if (stream) {
    FUZZ_CHECK(status == adxl::SUCCESS, "stream with status %u", status);
    FUZZ_CHECK(!with_secret, "a server that cannot know the client's nonce passed authentication");
    FUZZ_CHECK(ack.engine_id.size() <= wire::kMaxEngineIdLen, "oversized engine id accepted");
    CheckSameHost(IdentityOf(ack), *stream, /*harness_holds_peer_end=*/true, "client");
    stream->Shutdown();
    stream.reset();
  } else {
    FUZZ_CHECK(status != adxl::SUCCESS && !error.empty(), "failure without status or reason");
    FUZZ_CHECK(wire::SanitizePeerStatus(status) == status, "undocumented status %u returned", status);
  }
  server.Join();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  g_debug = getenv("LLMDD_FUZZ_DEBUG") != nullptr;
  if (!g_debug) SetLogLevel(LogLevel::kOff);
  unsetenv("LLMDD_FAULT_INJECTION");
  g_listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (g_listen_fd < 0 || bind(g_listen_fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) != 0 ||
      listen(g_listen_fd, 16) != 0 || getsockname(g_listen_fd, reinterpret_cast<sockaddr *>(&addr), &len) != 0) {
    perror("fuzz_handshake: loopback listener");
    abort();
  }
  g_listen_port = ntohs(addr.sin_port);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const bool with_secret = data[0] & 1;
  if (data[0] & 2)
    ClientHandshake(data + 1, size - 1, with_secret);
  else
    ServeHandshake(data + 1, size - 1, with_secret);
  return 0;
}
