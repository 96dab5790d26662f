// adxl_peer: a remote ADXL engine for the multi-process integration tests.
//
//   adxl_peer --engine ID [--regions N] [--size BYTES] [--seed S] [--mem host|device]
//             [--opt KEY=VALUE]...
//
// Initializes an AdxlEngine with ID ("ip:port" listens, "ip" is client-only) and the
// given options, allocates N regions of BYTES each (each one ends right before a
// PROT_NONE guard page), fills region i with itest pattern seed S+i (byte at offset o
// = itest::PatternByte(S+i, o)), registers them, prints
//     REGION <index> <addr-hex> <len> <seed>      (one per region)
//     READY
// and then serves line commands on stdin, one reply line each:
//     PING                                   -> PONG
//     METRICS                                -> METRICS <llmdd_ext::GetMetricsJson, one line>
//     CHECK <i> <off> <len> <seed>           -> OK | BAD <first mismatching offset in region>
//     FILL <i> <seed>                        -> OK             (whole region = pattern seed)
//     CRC <i> <off> <len>                    -> CRC <hex of itest::Hash64(bytes)>
//     MATCHES <i> <off> <len> <seed> <pos0>  -> MATCHES <n>: how many 8-byte words at off, off+8, ...
//                                               equal the pattern seed at pos0, pos0+8, ... (bytes a
//                                               write of a buffer with that pattern would leave)
//     REGISTER <size> <seed>                 -> REGION ... | ERR <status>
//     MALLOCREG <size> <seed>                -> REGION ... | ERR <status>: like REGISTER, in memory
//                                               from AdxlEngine::MallocMem (shareable with
//                                               same-host peers; never freed before exit)
//     SPLITREG <size> <seed>                 -> two REGION lines: one allocation of 2*size
//                                               registered as two adjacent regions
//                                               (seeds seed and seed+1)
//     ADJREG <size> <seed> <access>...       -> one REGION line per <access> (rw, ro or wo:
//                                               the remote access rights of
//                                               llmdd/extensions.h; local: registered with
//                                               MemDesc::local_only): one allocation of
//                                               N*size registered as N adjacent regions,
//                                               region k filled with seed+k | ERR <text>
//     DEREGISTER <i>                         -> STATUS <status>   (memory stays mapped)
//     CONNECT <remote> <timeout_ms>          -> STATUS <status>
//     DISCONNECT <remote> <timeout_ms>       -> STATUS <status>
//     XFER <remote> READ|WRITE <i> <off> <remote-addr-hex> <len> <timeout_ms>
//                                            -> STATUS <status>  (local side: region i + off)
//     NOTIFY <remote> <name> <msg> <timeout_ms>
//                                            -> STATUS <status>  (SendNotify; name and msg as
//                                               itest::HexToken: 'x' + hex bytes)
//     NOTIFIES                               -> NOTIFIES <status> <count>, then <count> lines
//                                               N <name> <msg>   (GetNotifies, as HexToken)
//     WATCHNOTIFY <count> <i> <timeout_ms>   -> WATCHED <seen> <bad> <first-bad|->
//                                               polls GetNotifies until <count> notifies named
//                                               w<k> with message "<off> <len> <seed>" have
//                                               come (or the timeout), checking for each, as
//                                               soon as it is seen, that region i holds pattern
//                                               <seed> at [off, off+len) (what the sender
//                                               wrote before notifying); first-bad: k@offset
//     QUIT                                   -> Finalize, exit 0
// Malformed commands answer "ERR <text>". If Initialize fails it prints
// "INIT_FAILED <status>" and exits 3. It exits when stdin closes (Finalize bounded by
// an alarm), and dies with its parent (PR_SET_PDEATHSIG, also set by the launcher).
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "../process_util.h"
#include "adxl/adxl_engine.h"
#include "llmdd/extensions.h"

namespace {

struct Region {
  uint8_t *data = nullptr;
  size_t len = 0;
  uint64_t seed = 0;
  adxl::MemHandle handle = nullptr;
  bool registered = false;
};

adxl::AdxlEngine *g_engine = nullptr;
std::vector<std::unique_ptr<itest::GuardedBuffer>> g_buffers;  // never freed before exit
std::vector<Region> g_regions;
adxl::MemType g_mem_type = adxl::MEM_HOST;

void Reply(const std::string &line) {
  std::string s = line + "\n";
  fwrite(s.data(), 1, s.size(), stdout);
  fflush(stdout);
}

std::string Hex(uint64_t v) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%" PRIx64, v);
  return buf;
}

std::string RegionLine(size_t idx) {
  const Region &r = g_regions[idx];
  return "REGION " + std::to_string(idx) + " " + Hex(reinterpret_cast<uintptr_t>(r.data)) + " " +
         std::to_string(r.len) + " " + std::to_string(r.seed);
}

// Registers [data, data+len) with the given remote access rights; returns the status.
uint32_t AddRegion(uint8_t *data, size_t len, uint64_t seed, size_t *idx,
                   llmdd_ext::RemoteAccess access = llmdd_ext::kRemoteReadWrite, bool local_only = false) {
  Region r;
  r.data = data;
  r.len = len;
  r.seed = seed;
  adxl::MemDesc desc{};
  desc.addr = reinterpret_cast<uintptr_t>(data);
  desc.len = len;
  if (access != llmdd_ext::kRemoteReadWrite) llmdd_ext::SetRemoteAccess(desc, access);
  desc.local_only = local_only;
  uint32_t st = g_engine->RegisterMem(desc, g_mem_type, r.handle);
  if (st != adxl::SUCCESS) return st;
  r.registered = true;
  g_regions.push_back(r);
  *idx = g_regions.size() - 1;
  return st;
}

uint8_t *Allocate(size_t len) {
  auto buf = std::make_unique<itest::GuardedBuffer>();
  if (!buf->Allocate(len)) return nullptr;
  uint8_t *p = buf->data();
  g_buffers.push_back(std::move(buf));
  return p;
}

[[noreturn]] void FinalizeAndExit(int code) {
  // A hanging Finalize must not leave the peer around forever: SIGALRM kills it,
  // and the test sees "killed by signal 14" instead of exit code 0.
  signal(SIGALRM, SIG_DFL);
  alarm(15);
  g_engine->Finalize();
  alarm(0);
  fflush(stdout);
  _exit(code);
}

bool ParseU64(const std::string &s, uint64_t *out, int base = 10) {
  if (s.empty()) return false;
  char *end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s.c_str(), &end, base);
  if (errno != 0 || end == nullptr || *end != '\0') return false;
  *out = v;
  return true;
}

bool ParseI32(const std::string &s, int32_t *out) {
  if (s.empty()) return false;
  char *end = nullptr;
  errno = 0;
  long v = std::strtol(s.c_str(), &end, 10);
  if (errno != 0 || end == nullptr || *end != '\0') return false;
  *out = static_cast<int32_t>(v);
  return true;
}

// Validates a region index and a byte range in it.
bool RegionRange(const std::string &si, const std::string &so, const std::string &sl, Region **r, uint64_t *off,
                 uint64_t *len, std::string *err) {
  uint64_t idx = 0;
  if (!ParseU64(si, &idx) || idx >= g_regions.size()) {
    *err = "ERR bad region index";
    return false;
  }
  if (!ParseU64(so, off) || !ParseU64(sl, len) || *off > g_regions[idx].len || *len > g_regions[idx].len - *off) {
    *err = "ERR bad range";
    return false;
  }
  *r = &g_regions[idx];
  return true;
}

void Serve(const std::vector<std::string> &t) {
  const std::string &cmd = t[0];
  std::string err;
  if (cmd == "PING") {
    Reply("PONG");
  } else if (cmd == "METRICS") {
    const char *json = nullptr;
    if (llmdd_ext::GetMetricsJson(*g_engine, json) != adxl::SUCCESS || json == nullptr) return Reply("ERR metrics");
    std::string line = json;
    for (char &c : line)
      if (c == '\n') c = ' ';
    Reply("METRICS " + line);
  } else if (cmd == "CHECK" && t.size() == 5) {
    Region *r = nullptr;
    uint64_t off = 0, len = 0, seed = 0;
    if (!RegionRange(t[1], t[2], t[3], &r, &off, &len, &err)) return Reply(err);
    if (!ParseU64(t[4], &seed)) return Reply("ERR bad seed");
    size_t bad = itest::FindPatternMismatch(r->data + off, len, seed, off);
    if (bad == SIZE_MAX) return Reply("OK");
    Reply("BAD " + std::to_string(off + bad));
  } else if (cmd == "FILL" && t.size() == 3) {
    uint64_t idx = 0, seed = 0;
    if (!ParseU64(t[1], &idx) || idx >= g_regions.size() || !ParseU64(t[2], &seed)) return Reply("ERR bad args");
    itest::FillPattern(g_regions[idx].data, g_regions[idx].len, seed, 0);
    g_regions[idx].seed = seed;
    Reply("OK");
  } else if (cmd == "CRC" && t.size() == 4) {
    Region *r = nullptr;
    uint64_t off = 0, len = 0;
    if (!RegionRange(t[1], t[2], t[3], &r, &off, &len, &err)) return Reply(err);
    Reply("CRC " + Hex(itest::Hash64(r->data + off, len)));
  } else if (cmd == "MATCHES" && t.size() == 6) {
    Region *r = nullptr;
    uint64_t off = 0, len = 0, seed = 0, pos0 = 0;
    if (!RegionRange(t[1], t[2], t[3], &r, &off, &len, &err)) return Reply(err);
    if (!ParseU64(t[4], &seed) || !ParseU64(t[5], &pos0)) return Reply("ERR bad args");
    std::vector<uint8_t> pattern(len);
    itest::FillPattern(pattern.data(), len, seed, pos0);
    uint64_t n = 0;
    for (uint64_t k = 0; k + 8 <= len; k += 8) n += memcmp(r->data + off + k, pattern.data() + k, 8) == 0 ? 1 : 0;
    Reply("MATCHES " + std::to_string(n));
  } else if (cmd == "REGISTER" && t.size() == 3) {
    uint64_t size = 0, seed = 0;
    if (!ParseU64(t[1], &size) || size == 0 || !ParseU64(t[2], &seed)) return Reply("ERR bad args");
    uint8_t *p = Allocate(size);
    if (p == nullptr) return Reply("ERR out of memory");
    itest::FillPattern(p, size, seed, 0);
    size_t idx = 0;
    uint32_t st = AddRegion(p, size, seed, &idx);
    if (st != adxl::SUCCESS) return Reply("ERR " + std::to_string(st));
    Reply(RegionLine(idx));
  } else if (cmd == "MALLOCREG" && t.size() == 3) {
    uint64_t size = 0, seed = 0;
    if (!ParseU64(t[1], &size) || size == 0 || !ParseU64(t[2], &seed)) return Reply("ERR bad args");
    void *mem = nullptr;
    uint32_t st = adxl::AdxlEngine::MallocMem(adxl::MEM_HOST, size, &mem);
    if (st != adxl::SUCCESS) return Reply("ERR " + std::to_string(st));
    auto *p = static_cast<uint8_t *>(mem);
    itest::FillPattern(p, size, seed, 0);
    size_t idx = 0;
    st = AddRegion(p, size, seed, &idx);
    if (st != adxl::SUCCESS) return Reply("ERR " + std::to_string(st));
    Reply(RegionLine(idx));
  } else if (cmd == "SPLITREG" && t.size() == 3) {
    uint64_t size = 0, seed = 0;
    if (!ParseU64(t[1], &size) || size == 0 || !ParseU64(t[2], &seed)) return Reply("ERR bad args");
    uint8_t *p = Allocate(2 * size);
    if (p == nullptr) return Reply("ERR out of memory");
    itest::FillPattern(p, size, seed, 0);
    itest::FillPattern(p + size, size, seed + 1, 0);
    size_t a = 0, b = 0;
    uint32_t st = AddRegion(p, size, seed, &a);
    if (st != adxl::SUCCESS) return Reply("ERR " + std::to_string(st));
    st = AddRegion(p + size, size, seed + 1, &b);
    if (st != adxl::SUCCESS) return Reply("ERR " + std::to_string(st));
    Reply(RegionLine(a));
    Reply(RegionLine(b));
  } else if (cmd == "ADJREG" && t.size() >= 4) {
    uint64_t size = 0, seed = 0;
    if (!ParseU64(t[1], &size) || size == 0 || !ParseU64(t[2], &seed)) return Reply("ERR bad args");
    std::vector<llmdd_ext::RemoteAccess> rights;
    std::vector<bool> local_only;
    for (size_t k = 3; k < t.size(); ++k) {
      local_only.push_back(t[k] == "local");
      if (t[k] == "rw" || t[k] == "local") {
        rights.push_back(llmdd_ext::kRemoteReadWrite);
      } else if (t[k] == "ro") {
        rights.push_back(llmdd_ext::kRemoteReadOnly);
      } else if (t[k] == "wo") {
        rights.push_back(llmdd_ext::kRemoteWriteOnly);
      } else {
        return Reply("ERR bad access '" + t[k] + "' (rw, ro, wo or local)");
      }
    }
    uint8_t *p = Allocate(rights.size() * size);
    if (p == nullptr) return Reply("ERR out of memory");
    std::vector<size_t> added;
    for (size_t k = 0; k < rights.size(); ++k) {
      itest::FillPattern(p + k * size, size, seed + k, 0);
      size_t idx = 0;
      uint32_t st = AddRegion(p + k * size, size, seed + k, &idx, rights[k], local_only[k]);
      if (st != adxl::SUCCESS) return Reply("ERR " + std::to_string(st));
      added.push_back(idx);
    }
    for (size_t idx : added) Reply(RegionLine(idx));
  } else if (cmd == "DEREGISTER" && t.size() == 2) {
    uint64_t idx = 0;
    if (!ParseU64(t[1], &idx) || idx >= g_regions.size()) return Reply("ERR bad region index");
    uint32_t st = g_engine->DeregisterMem(g_regions[idx].handle);
    g_regions[idx].registered = false;
    Reply("STATUS " + std::to_string(st));
  } else if (cmd == "CONNECT" && t.size() == 3) {
    int32_t timeout = 0;
    if (!ParseI32(t[2], &timeout)) return Reply("ERR bad timeout");
    Reply("STATUS " + std::to_string(g_engine->Connect(adxl::AscendString(t[1].c_str()), timeout)));
  } else if (cmd == "DISCONNECT" && t.size() == 3) {
    int32_t timeout = 0;
    if (!ParseI32(t[2], &timeout)) return Reply("ERR bad timeout");
    Reply("STATUS " + std::to_string(g_engine->Disconnect(adxl::AscendString(t[1].c_str()), timeout)));
  } else if (cmd == "XFER" && t.size() == 8) {
    adxl::TransferOp op;
    if (t[2] == "READ") {
      op = adxl::READ;
    } else if (t[2] == "WRITE") {
      op = adxl::WRITE;
    } else {
      return Reply("ERR bad op");
    }
    Region *r = nullptr;
    uint64_t off = 0, len = 0, raddr = 0;
    int32_t timeout = 0;
    if (!RegionRange(t[3], t[4], t[6], &r, &off, &len, &err)) return Reply(err);
    if (!ParseU64(t[5], &raddr, 16) || !ParseI32(t[7], &timeout)) return Reply("ERR bad args");
    std::vector<adxl::TransferOpDesc> descs{{reinterpret_cast<uintptr_t>(r->data + off), raddr, len}};
    Reply("STATUS " + std::to_string(g_engine->TransferSync(adxl::AscendString(t[1].c_str()), op, descs, timeout)));
  } else if (cmd == "NOTIFY" && t.size() == 5) {
    int32_t timeout = 0;
    adxl::NotifyDesc notify;
    std::string name, msg;
    if (!itest::FromHexToken(t[2], &name) || !itest::FromHexToken(t[3], &msg) || !ParseI32(t[4], &timeout))
      return Reply("ERR bad args");
    notify.name = adxl::AscendString(name.data(), name.size());
    notify.notify_msg = adxl::AscendString(msg.data(), msg.size());
    Reply("STATUS " + std::to_string(g_engine->SendNotify(adxl::AscendString(t[1].c_str()), notify, timeout)));
  } else if (cmd == "NOTIFIES" && t.size() == 1) {
    std::vector<adxl::NotifyDesc> notifies;
    uint32_t st = g_engine->GetNotifies(notifies);
    std::string out = "NOTIFIES " + std::to_string(st) + " " + std::to_string(notifies.size());
    for (const adxl::NotifyDesc &n : notifies) {
      out += "\nN " + itest::HexToken(std::string(n.name.GetString(), n.name.GetLength())) + " " +
             itest::HexToken(std::string(n.notify_msg.GetString(), n.notify_msg.GetLength()));
    }
    Reply(out);
  } else if (cmd == "WATCHNOTIFY" && t.size() == 4) {
    uint64_t count = 0, idx = 0;
    int32_t timeout = 0;
    if (!ParseU64(t[1], &count) || !ParseU64(t[2], &idx) || idx >= g_regions.size() || !ParseI32(t[3], &timeout))
      return Reply("ERR bad args");
    const Region &r = g_regions[idx];
    uint64_t seen = 0, bad = 0;
    std::string first_bad = "-";
    const auto deadline = itest::Clock::now() + std::chrono::milliseconds(timeout);
    std::vector<adxl::NotifyDesc> notifies;
    while (seen < count && itest::Clock::now() < deadline) {
      notifies.clear();
      if (g_engine->GetNotifies(notifies) != adxl::SUCCESS) return Reply("ERR GetNotifies failed");
      if (notifies.empty()) {
        sched_yield();
        continue;
      }
      for (const adxl::NotifyDesc &n : notifies) {
        // Checked at once: the bytes the sender wrote before this notify must be here now.
        std::istringstream in(std::string(n.notify_msg.GetString(), n.notify_msg.GetLength()));
        uint64_t off = 0, len = 0, seed = 0;
        const std::string name(n.name.GetString(), n.name.GetLength());
        size_t mismatch = SIZE_MAX;
        if (!(in >> off >> len >> seed) || off > r.len || len > r.len - off) {
          mismatch = 0;
        } else {
          mismatch = itest::FindPatternMismatch(r.data + off, len, seed, off);
        }
        if (mismatch != SIZE_MAX) {
          if (bad++ == 0) first_bad = name + "@" + std::to_string(off + mismatch);
        }
        ++seen;
      }
    }
    Reply("WATCHED " + std::to_string(seen) + " " + std::to_string(bad) + " " + first_bad);
  } else if (cmd == "QUIT") {
    Reply("BYE");
    FinalizeAndExit(0);
  } else {
    Reply("ERR unknown command or wrong argument count: " + cmd);
  }
}

int Usage() {
  fprintf(stderr,
          "usage: adxl_peer --engine ID [--regions N] [--size BYTES] [--seed S] [--mem host|device] "
          "[--opt KEY=VALUE]...\n");
  return 2;
}

}  // namespace

int main(int argc, char **argv) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  std::string engine_id;
  uint64_t regions = 1, size = 1 << 20, seed = 1;
  std::vector<std::pair<std::string, std::string>> opts;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) return Usage();
    std::string v = argv[++i];
    if (a == "--engine") {
      engine_id = v;
    } else if (a == "--regions") {
      if (!ParseU64(v, &regions)) return Usage();
    } else if (a == "--size") {
      if (!ParseU64(v, &size) || size == 0) return Usage();
    } else if (a == "--seed") {
      if (!ParseU64(v, &seed)) return Usage();
    } else if (a == "--mem") {
      if (v == "device") {
        g_mem_type = adxl::MEM_DEVICE;
      } else if (v == "host") {
        g_mem_type = adxl::MEM_HOST;
      } else {
        return Usage();
      }
    } else if (a == "--opt") {
      size_t eq = v.find('=');
      if (eq == std::string::npos) return Usage();
      opts.emplace_back(v.substr(0, eq), v.substr(eq + 1));
    } else {
      return Usage();
    }
  }
  if (engine_id.empty()) return Usage();

  static adxl::AdxlEngine engine;  // static: never destroyed behind Finalize's back
  g_engine = &engine;
  uint32_t st = engine.Initialize(adxl::AscendString(engine_id.c_str()), itest::EngineOptions(opts));
  if (st != adxl::SUCCESS) {
    Reply("INIT_FAILED " + std::to_string(st));
    fflush(stdout);
    _exit(3);
  }
  for (uint64_t i = 0; i < regions; ++i) {
    uint8_t *p = Allocate(size);
    if (p == nullptr) {
      Reply("INIT_FAILED alloc");
      _exit(3);
    }
    itest::FillPattern(p, size, seed + i, 0);
    size_t idx = 0;
    st = AddRegion(p, size, seed + i, &idx);
    if (st != adxl::SUCCESS) {
      Reply("INIT_FAILED register " + std::to_string(st));
      _exit(3);
    }
  }
  for (size_t i = 0; i < g_regions.size(); ++i) Reply(RegionLine(i));
  Reply("READY");

  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::vector<std::string> tokens;
    std::string tok;
    while (in >> tok) tokens.push_back(tok);
    if (tokens.empty()) continue;
    Serve(tokens);
  }
  // stdin closed: the test is gone or done with us.
  FinalizeAndExit(0);
}
