// llmdd_ucx_ref: UCX's own one-sided GET and PUT on user memory, the
// reference for our engine over UCX (issue 14's figures, docs/PERFORMANCE.md
// "UCX transport against UCX itself"). ucx_perftest reads memory UCX allocated
// itself; our engine maps the caller's memory with ucp_mem_map, so this
// program does what our UCX transport does, and nothing more:
//
//   - two processes (fork), a target and a requester, each with one UCP
//     context (UCP_FEATURE_RMA | UCP_FEATURE_AM, as ours) and one worker
//     (UCS_THREAD_MODE_SERIALIZED, as ours);
//   - the target mmaps its buffer (anonymous, MADV_HUGEPAGE, prefaulted: as
//     llmdd_bench's buffers), maps it with ucp_mem_map at that address,
//     packs the rkey and sends worker address, rkey and buffer address to
//     the requester over a socketpair; then it progresses its worker (busy)
//     until told to quit: UCX over tcp emulates GET/PUT with active
//     messages that the target's worker completes;
//   - the requester makes one endpoint with UCP_ERR_HANDLING_MODE_PEER (as
//     ours), unpacks the rkey once, and per call posts `batch` descriptors of
//     `size` bytes (ucp_get_nbx or ucp_put_nbx, no wait between them) from or
//     into its own mmap'd buffer, then one ucp_ep_flush_nbx, and waits
//     (progressing) for the flush: one call is one of our TransferSync calls
//     without our engine (no staging copy, no key lease, no request object);
//   - bytes are checked: the first and the last call of each op are verified
//     (GET: the requester compares with the target's pattern; PUT: the target
//     compares what arrived), a wrong byte is an error and no figure.
//
// Output: one JSON line per op on stdout (mode "ucx_ref"), with llmdd_bench's
// field names (transport "ucx", ucx_tls: UCX_TLS, as llmdd_bench's ucx
// records): bytes per call, GB/s (1e9 B/s over the timed calls' wall
// clock), descriptors/s, per-call p50/p99 in microseconds, iterations, UCX_TLS, and
// the lanes UCX chose for the endpoint (from ucp_ep_print_info: the RMA and
// AM lanes' transports). Exit 0 when every op measured with correct bytes, 1
// otherwise, 2 on bad arguments.
//
//   llmdd_ucx_ref [--ops get,put] [--size BYTES] [--batch N] [--time SEC]
//                 [--warmup N] [--err-mode peer|none] [--spin] [--stage] [--tag TEXT]
//
// --stage (information, not the reference): each call goes through a staging
// buffer as our transport's do (docs/UCX.md "Staging"): GET lands in it and
// is copied to the caller's buffer after the flush, PUT is copied into it
// before posting; what that copy costs UCX alone.
//
// Both processes progress their worker in a loop; when a progress call found
// nothing they sched_yield (as our engine's waits do: on a host with fewer
// cores than busy threads a pure spin starves the peer), --spin: never yield
// (ucx_perftest's way). The JSON says which ("wait").
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ucp/api/ucp.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::vector<std::string> ops = {"get", "put"};
  uint64_t size = 1 << 20;
  uint64_t batch = 1;
  double time_s = 1.0;
  int warmup = 3;
  bool peer_errors = true;
  bool yield = true;  // sched_yield when a progress call found nothing (as our engine's waits); --spin: never
  bool stage = false;  // --stage: through a staging buffer and one memcpy per call, as our transport (information)
  std::string tag;
};

[[noreturn]] void Usage(const char *why) {
  fprintf(stderr,
          "llmdd_ucx_ref: %s\n"
          "usage: llmdd_ucx_ref [--ops get,put] [--size BYTES] [--batch N] [--time SEC] [--warmup N]\n"
          "                     [--err-mode peer|none] [--spin] [--stage] [--tag TEXT]\n",
          why);
  exit(2);
}

uint64_t ParseSize(const char *text) {
  char *end = nullptr;
  errno = 0;
  uint64_t v = strtoull(text, &end, 10);
  if (errno != 0 || end == text) Usage("bad size");
  if (*end == 'K' || *end == 'k') v <<= 10, ++end;
  else if (*end == 'M' || *end == 'm') v <<= 20, ++end;
  else if (*end == 'G' || *end == 'g') v <<= 30, ++end;
  if (*end != '\0' || v == 0) Usage("bad size");
  return v;
}

// Both ends compute the same pattern from a seed: a wrong or missing byte shows.
uint8_t PatternByte(uint64_t seed, uint64_t i) {
  const uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ (seed * 0xBF58476D1CE4E5B9ull);
  return static_cast<uint8_t>(x >> 56);
}

void Fill(uint8_t *p, uint64_t n, uint64_t seed) {
  for (uint64_t i = 0; i < n; ++i) p[i] = PatternByte(seed, i);
}

// The first offset where p differs from the pattern, or n.
uint64_t FirstWrong(const uint8_t *p, uint64_t n, uint64_t seed) {
  for (uint64_t i = 0; i < n; ++i)
    if (p[i] != PatternByte(seed, i)) return i;
  return n;
}

bool WriteAll(int fd, const void *data, size_t n) {
  const char *p = static_cast<const char *>(data);
  while (n > 0) {
    const ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool ReadAll(int fd, void *data, size_t n) {
  char *p = static_cast<char *>(data);
  while (n > 0) {
    const ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool SendBlob(int fd, const std::string &blob) {
  const uint64_t n = blob.size();
  return WriteAll(fd, &n, sizeof(n)) && WriteAll(fd, blob.data(), blob.size());
}

bool RecvBlob(int fd, std::string *blob) {
  uint64_t n = 0;
  if (!ReadAll(fd, &n, sizeof(n)) || n > (1u << 20)) return false;
  blob->resize(n);
  return ReadAll(fd, &(*blob)[0], n);
}

// The requester's commands to the target (one byte and a seed; one byte back).
enum : char { kCmdFill = 'F', kCmdVerify = 'V', kCmdQuit = 'Q' };

struct Ucx {
  ucp_context_h context = nullptr;
  ucp_worker_h worker = nullptr;
  bool Init(std::string *error) {
    ucp_config_t *config = nullptr;
    ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
    if (st != UCS_OK) return *error = std::string("ucp_config_read: ") + ucs_status_string(st), false;
    ucp_params_t params;
    memset(&params, 0, sizeof(params));
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM;  // as src/transport/ucx/ucx_transport.cc
    st = ucp_init(&params, config, &context);
    ucp_config_release(config);
    if (st != UCS_OK) return context = nullptr, *error = std::string("ucp_init: ") + ucs_status_string(st), false;
    ucp_worker_params_t wp;
    memset(&wp, 0, sizeof(wp));
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SERIALIZED;
    st = ucp_worker_create(context, &wp, &worker);
    if (st != UCS_OK) return worker = nullptr, *error = std::string("ucp_worker_create: ") + ucs_status_string(st), false;
    return true;
  }
  ~Ucx() {
    if (worker != nullptr) ucp_worker_destroy(worker);
    if (context != nullptr) ucp_cleanup(context);
  }
};

uint8_t *MapBuffer(uint64_t bytes) {
  void *p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  madvise(p, bytes, MADV_HUGEPAGE);
  memset(p, 0x5A, bytes);  // prefaulted, as llmdd_bench's buffers
  return static_cast<uint8_t *>(p);
}

// ------------------------------------------------------------------ target

int Target(int fd, uint64_t bytes, bool yield) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  Ucx ucx;
  std::string error;
  uint8_t *buf = MapBuffer(bytes);
  if (buf == nullptr || !ucx.Init(&error)) {
    fprintf(stderr, "llmdd_ucx_ref target: %s\n", buf == nullptr ? "mmap failed" : error.c_str());
    SendBlob(fd, "");
    return 1;
  }
  ucp_mem_map_params_t mp;
  memset(&mp, 0, sizeof(mp));
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_PROT;
  mp.address = buf;
  mp.length = bytes;
  mp.prot = UCP_MEM_MAP_PROT_LOCAL_READ | UCP_MEM_MAP_PROT_LOCAL_WRITE | UCP_MEM_MAP_PROT_REMOTE_READ |
            UCP_MEM_MAP_PROT_REMOTE_WRITE;
  ucp_mem_h memh = nullptr;
  ucs_status_t st = ucp_mem_map(ucx.context, &mp, &memh);
  void *rkey = nullptr;
  size_t rkey_len = 0;
  if (st == UCS_OK) st = ucp_rkey_pack(ucx.context, memh, &rkey, &rkey_len);
  ucp_address_t *addr = nullptr;
  size_t addr_len = 0;
  if (st == UCS_OK) st = ucp_worker_get_address(ucx.worker, &addr, &addr_len);
  if (st != UCS_OK) {
    fprintf(stderr, "llmdd_ucx_ref target: %s\n", ucs_status_string(st));
    SendBlob(fd, "");
    return 1;
  }
  const uint64_t base = reinterpret_cast<uintptr_t>(buf);
  std::string where(reinterpret_cast<const char *>(&base), sizeof(base));
  if (!SendBlob(fd, std::string(reinterpret_cast<const char *>(addr), addr_len)) ||
      !SendBlob(fd, std::string(static_cast<const char *>(rkey), rkey_len)) || !SendBlob(fd, where))
    return 1;
  ucp_worker_release_address(ucx.worker, addr);
  ucp_rkey_buffer_release(rkey);
  // Busy progress (as ucx_perftest's server), looking at the socket every 256 rounds.
  for (unsigned round = 0;; ++round) {
    if (ucp_worker_progress(ucx.worker) == 0 && yield) sched_yield();
    if ((round & 255) != 0) continue;
    pollfd pfd{fd, POLLIN, 0};
    if (poll(&pfd, 1, 0) <= 0) continue;
    char cmd = 0;
    uint64_t seed = 0, len = 0;
    if (!ReadAll(fd, &cmd, 1) || cmd == kCmdQuit || !ReadAll(fd, &seed, 8) || !ReadAll(fd, &len, 8)) break;
    char answer = 'y';
    if (cmd == kCmdFill) {
      Fill(buf, std::min(len, bytes), seed);
    } else {
      const uint64_t n = std::min(len, bytes);
      const uint64_t wrong = FirstWrong(buf, n, seed);
      if (wrong != n) {
        fprintf(stderr, "llmdd_ucx_ref target: PUT byte %" PRIu64 " is 0x%02x, expected 0x%02x\n", wrong, buf[wrong],
                PatternByte(seed, wrong));
        answer = 'n';
      }
    }
    if (!WriteAll(fd, &answer, 1)) break;
  }
  ucp_mem_unmap(ucx.context, memh);
  return 0;
}

// ------------------------------------------------------------------ requester

struct Requester {
  Ucx ucx;
  ucp_ep_h ep = nullptr;
  ucp_rkey_h rkey = nullptr;
  uint64_t remote = 0;
  int fd = -1;
  bool failed = false;
  bool yield = true;
  std::string ep_error;

  static void OnError(void *arg, ucp_ep_h, ucs_status_t st) {
    auto *self = static_cast<Requester *>(arg);
    self->failed = true;
    self->ep_error = ucs_status_string(st);
  }

  bool Command(char cmd, uint64_t seed, uint64_t len) {
    char answer = 0;
    // The target looks at the socket between progress calls; a pending flush of ours needs none.
    return WriteAll(fd, &cmd, 1) && WriteAll(fd, &seed, 8) && WriteAll(fd, &len, 8) && ReadAll(fd, &answer, 1) &&
           answer == 'y';
  }

  // One call: `batch` operations of `size` bytes, one flush, waited for. "" or what went wrong.
  uint8_t *stage = nullptr;  // --stage
  std::string Call(bool get, uint8_t *user, uint64_t size, uint64_t batch) {
    uint8_t *local = stage != nullptr ? stage : user;
    if (stage != nullptr && !get) memcpy(stage, user, size * batch);
    ucp_request_param_t param;
    memset(&param, 0, sizeof(param));
    for (uint64_t i = 0; i < batch; ++i) {
      void *l = local + i * size;
      const uint64_t r = remote + i * size;
      void *req = get ? ucp_get_nbx(ep, l, size, r, rkey, &param) : ucp_put_nbx(ep, l, size, r, rkey, &param);
      if (UCS_PTR_IS_ERR(req)) return std::string(get ? "ucp_get_nbx: " : "ucp_put_nbx: ") +
                                      ucs_status_string(UCS_PTR_STATUS(req));
      if (req != nullptr) ucp_request_free(req);  // the flush says when it is done, as ours
    }
    void *flush = ucp_ep_flush_nbx(ep, &param);
    if (UCS_PTR_IS_ERR(flush)) return std::string("ucp_ep_flush_nbx: ") + ucs_status_string(UCS_PTR_STATUS(flush));
    if (flush == nullptr) {
      if (stage != nullptr && get) memcpy(user, stage, size * batch);
      return "";
    }
    const auto give_up = Clock::now() + std::chrono::seconds(30);
    ucs_status_t st;
    while ((st = ucp_request_check_status(flush)) == UCS_INPROGRESS) {
      if (ucp_worker_progress(ucx.worker) == 0 && yield) sched_yield();
      if (Clock::now() > give_up) {
        st = UCS_ERR_TIMED_OUT;
        break;
      }
    }
    if (st == UCS_ERR_TIMED_OUT) return "the flush did not complete within 30 s";  // leaked: we exit
    ucp_request_free(flush);
    if (st != UCS_OK) return std::string("flush: ") + ucs_status_string(st) + (failed ? " (" + ep_error + ")" : "");
    if (stage != nullptr && get) memcpy(user, stage, size * batch);
    return "";
  }
};

std::string Lanes(ucp_ep_h ep) {
  // ucp_ep_print_info names each lane's transport and what it is used for.
  char *text = nullptr;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (f == nullptr) return "";
  ucp_ep_print_info(ep, f);
  fclose(f);
  std::string out, all(text, len);
  free(text);
  size_t at = 0;
  while (at < all.size()) {
    size_t nl = all.find('\n', at);
    if (nl == std::string::npos) nl = all.size();
    std::string line = all.substr(at, nl - at);
    at = nl + 1;
    if (line.find("lane[") == std::string::npos) continue;
    // "#   lane[0]:  1:tcp/lo.0 md[1] ... am am_bw#0 rma_bw#0": keep it compact.
    const size_t start = line.find("lane[");
    line = line.substr(start);
    std::string compact;
    bool space = false;
    for (char c : line) {
      if (c == ' ' || c == '\t') {
        space = true;
        continue;
      }
      if (c == '"' || c == '\\') continue;
      if (space && !compact.empty()) compact += ' ';
      space = false;
      compact += c;
    }
    if (!out.empty()) out += "; ";
    out += compact;
  }
  return out;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5));
  return v[i];
}

int Run(const Options &opt, int fd, uint64_t bytes) {
  Requester rq;
  rq.fd = fd;
  rq.yield = opt.yield;
  std::string error, address, packed, where;
  if (!RecvBlob(fd, &address) || address.empty() || !RecvBlob(fd, &packed) || !RecvBlob(fd, &where) ||
      where.size() != 8) {
    fprintf(stderr, "llmdd_ucx_ref: the target did not start (see above)\n");
    return 1;
  }
  memcpy(&rq.remote, where.data(), 8);
  uint8_t *local = MapBuffer(bytes);
  if (opt.stage) rq.stage = static_cast<uint8_t *>(malloc(bytes));  // as our chunks: plain heap memory
  if (local == nullptr || (opt.stage && rq.stage == nullptr) || !rq.ucx.Init(&error)) {
    fprintf(stderr, "llmdd_ucx_ref: %s\n", local == nullptr ? "mmap failed" : error.c_str());
    return 1;
  }
  ucp_ep_params_t ep_params;
  memset(&ep_params, 0, sizeof(ep_params));
  ep_params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  ep_params.address = reinterpret_cast<const ucp_address_t *>(address.data());
  ep_params.err_mode = opt.peer_errors ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
  if (opt.peer_errors) {
    ep_params.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep_params.err_handler.cb = &Requester::OnError;
    ep_params.err_handler.arg = &rq;
  }
  ucs_status_t st = ucp_ep_create(rq.ucx.worker, &ep_params, &rq.ep);
  if (st != UCS_OK) {
    fprintf(stderr, "llmdd_ucx_ref: ucp_ep_create (%s error handling): %s\n", opt.peer_errors ? "peer" : "no",
            ucs_status_string(st));
    return 1;
  }
  st = ucp_ep_rkey_unpack(rq.ep, packed.data(), &rq.rkey);
  if (st != UCS_OK) {
    fprintf(stderr, "llmdd_ucx_ref: ucp_ep_rkey_unpack: %s\n", ucs_status_string(st));
    return 1;
  }
  const char *tls = getenv("UCX_TLS");
  int rc = 0;
  uint64_t seed = 1000;
  for (const std::string &op : opt.ops) {
    const bool get = op == "get";
    const uint64_t call_bytes = opt.size * opt.batch;
    // Checked call: the target fills (GET) or the requester fills and the target verifies (PUT).
    auto checked = [&]() -> std::string {
      ++seed;
      if (get) {
        if (!rq.Command(kCmdFill, seed, call_bytes)) return "the target did not fill its buffer";
        memset(local, 0, call_bytes);
        std::string e = rq.Call(true, local, opt.size, opt.batch);
        if (!e.empty()) return e;
        const uint64_t wrong = FirstWrong(local, call_bytes, seed);
        if (wrong != call_bytes) return "GET byte " + std::to_string(wrong) + " is wrong";
        return "";
      }
      Fill(local, call_bytes, seed);
      std::string e = rq.Call(false, local, opt.size, opt.batch);
      if (!e.empty()) return e;
      if (!rq.Command(kCmdVerify, seed, call_bytes)) return "the target found wrong PUT bytes";
      return "";
    };
    std::string e = checked();
    for (int i = 0; i < opt.warmup && e.empty(); ++i) e = rq.Call(get, local, opt.size, opt.batch);
    std::vector<double> us;
    const auto start = Clock::now();
    const auto stop = start + std::chrono::duration<double>(opt.time_s);
    while (e.empty()) {
      const auto t0 = Clock::now();
      e = rq.Call(get, local, opt.size, opt.batch);
      const auto t1 = Clock::now();
      us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      if (t1 >= stop && us.size() >= 3) break;
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    if (e.empty()) e = checked();  // the last call checked too
    std::string json = "{\"mode\":\"ucx_ref\",\"op\":\"" + op + "\",\"transport\":\"ucx\",\"ucx_tls\":\"" +
                       (tls ? tls : "") +
                       "\",\"err_mode\":\"" + (opt.peer_errors ? "peer" : "none") + "\",\"wait\":\"" + (opt.yield ? "yield" : "spin") + (opt.stage ? "\",\"staged\":\"yes" : "") +
                       "\",\"desc_size\":" + std::to_string(opt.size) + ",\"batch\":" + std::to_string(opt.batch) +
                       ",\"threads\":1";
    if (!opt.tag.empty()) json += ",\"tag\":\"" + opt.tag + "\"";
    if (e.empty()) {
      // As llmdd_bench: GB/s over the wall-clock time of the timed calls, and
      // bytes per call over the median call (less sensitive to descheduling).
      const double calls = static_cast<double>(us.size());
      const double p50 = Percentile(us, 0.5);
      char nums[320];
      snprintf(nums, sizeof(nums),
               ",\"bytes\":%" PRIu64 ",\"iters\":%zu,\"seconds\":%.4f,\"gbps\":%.4f,\"descs_per_s\":%.1f,"
               "\"p50_us\":%.2f,\"p99_us\":%.2f,\"gbps_p50\":%.4f",
               call_bytes, us.size(), elapsed, static_cast<double>(call_bytes) * calls / elapsed / 1e9,
               static_cast<double>(opt.batch) * calls / elapsed, p50, Percentile(us, 0.99),
               static_cast<double>(call_bytes) / (p50 * 1e3));
      json += nums;
    } else {
      json += ",\"error\":\"" + e + "\"";
      fprintf(stderr, "llmdd_ucx_ref: %s %s: %s\n", op.c_str(), tls ? tls : "", e.c_str());
      rc = 1;
    }
    json += ",\"ucx_lanes\":\"" + Lanes(rq.ep) + "\"}";
    printf("%s\n", json.c_str());
    fflush(stdout);
    if (!e.empty()) break;
  }
  char quit = kCmdQuit;
  WriteAll(fd, &quit, 1);
  ucp_rkey_destroy(rq.rkey);
  ucp_request_param_t close_param;
  memset(&close_param, 0, sizeof(close_param));
  close_param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  close_param.flags = UCP_EP_CLOSE_FLAG_FORCE;
  void *closing = ucp_ep_close_nbx(rq.ep, &close_param);
  if (closing != nullptr && !UCS_PTR_IS_ERR(closing)) {
    const auto until = Clock::now() + std::chrono::seconds(1);
    while (ucp_request_check_status(closing) == UCS_INPROGRESS && Clock::now() < until)
      ucp_worker_progress(rq.ucx.worker);
    ucp_request_free(closing);
  }
  return rc;
}

}  // namespace

int main(int argc, char **argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char * {
      if (i + 1 >= argc) Usage((a + " needs a value").c_str());
      return argv[++i];
    };
    if (a == "--ops") {
      opt.ops.clear();
      std::string list = value();
      for (size_t at = 0; at <= list.size();) {
        size_t comma = list.find(',', at);
        if (comma == std::string::npos) comma = list.size();
        const std::string w = list.substr(at, comma - at);
        if (w != "get" && w != "put") Usage("--ops takes get and put");
        opt.ops.push_back(w);
        at = comma + 1;
      }
    } else if (a == "--size") {
      opt.size = ParseSize(value());
    } else if (a == "--batch") {
      opt.batch = ParseSize(value());
    } else if (a == "--time") {
      opt.time_s = atof(value());
      if (!(opt.time_s > 0)) Usage("--time needs seconds > 0");
    } else if (a == "--warmup") {
      opt.warmup = atoi(value());
    } else if (a == "--err-mode") {
      const std::string m = value();
      if (m != "peer" && m != "none") Usage("--err-mode is peer or none");
      opt.peer_errors = m == "peer";
    } else if (a == "--stage") {
      opt.stage = true;
    } else if (a == "--spin") {
      opt.yield = false;
    } else if (a == "--tag") {
      opt.tag = value();
    } else if (a == "-h" || a == "--help") {
      Usage("UCX's own GET/PUT on ucp_mem_map'ed user memory (bench/ucx_ref.cc)");
    } else {
      Usage(("unknown option " + a).c_str());
    }
  }
  const uint64_t bytes = (opt.size * opt.batch + (2u << 20) - 1) / (2u << 20) * (2u << 20);
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
    perror("llmdd_ucx_ref: socketpair");
    return 1;
  }
  fflush(stdout);
  const pid_t child = fork();
  if (child < 0) {
    perror("llmdd_ucx_ref: fork");
    return 1;
  }
  if (child == 0) {
    close(sv[0]);
    _exit(Target(sv[1], bytes, opt.yield));
  }
  close(sv[1]);
  const int rc = Run(opt, sv[0], bytes);
  close(sv[0]);
  int status = 0;
  waitpid(child, &status, 0);
  return rc;
}
