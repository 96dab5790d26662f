"""Shared helpers for the Python reference peers of bench/compare.sh.

Each peer script runs a *target* (registers a buffer and serves) and an
*initiator* (reads from it and times the calls) as two processes on
127.0.0.1: the initiator starts the target as a child process, the two
exchange addresses/metadata over the child's stdin/stdout, and the child dies
when the initiator's pipe closes. Results are printed as JSON lines with the
same fields as llmdd_bench (mode, op, transport, desc_size, batch, threads,
bytes, iters, seconds, gbps, descs_per_s, p50_us, p99_us).
"""
import ctypes
import json
import math
import mmap
import os
import signal
import subprocess
import sys
import time


def alloc(nbytes, fill):
    """Anonymous, prefaulted buffer; returns (mmap object, address)."""
    m = mmap.mmap(-1, nbytes)
    chunk = bytes([fill]) * (1 << 20)
    for off in range(0, nbytes, len(chunk)):
        m[off:off + min(len(chunk), nbytes - off)] = chunk[:min(len(chunk), nbytes - off)]
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    return m, addr


def parse_points(text):
    """'65536:128,1048576:128' -> [(65536, 128), (1048576, 128)]"""
    out = []
    for word in text.split(","):
        size, batch = word.split(":")
        out.append((int(size), int(batch)))
    return out


def percentile(sorted_ns, q):
    idx = max(0, min(len(sorted_ns) - 1, int(math.ceil(q * len(sorted_ns))) - 1))
    return sorted_ns[idx]


def timed(call, seconds, warmup=2, min_iters=3, max_iters=10**7):
    """Runs call() warmup times, then until `seconds` passed (>= min_iters)."""
    for _ in range(warmup):
        call()
    samples = []
    start = time.perf_counter_ns()
    stop = start + int(seconds * 1e9)
    while len(samples) < max_iters:
        t0 = time.perf_counter_ns()
        call()
        t1 = time.perf_counter_ns()
        samples.append(t1 - t0)
        if t1 >= stop and len(samples) >= min_iters:
            break
    wall = (time.perf_counter_ns() - start) / 1e9
    return samples, wall


def record(mode, op, transport, size, batch, samples, wall, **extra):
    s = sorted(samples)
    n = len(s)
    rec = {
        "mode": mode, "op": op, "transport": transport, "desc_size": size, "batch": batch,
        "threads": 1, "bytes": size * batch, "iters": n, "seconds": wall,
        "gbps": size * batch * n / wall / 1e9 if wall > 0 else None,
        "descs_per_s": batch * n / wall if wall > 0 else None,
        "p50_us": percentile(s, 0.5) / 1e3 if n else None,
        "p99_us": percentile(s, 0.99) / 1e3 if n else None,
        "load1": os.getloadavg()[0],
    }
    rec.update(extra)
    return rec


def emit(rec):
    print(json.dumps(rec), flush=True)


def fail(mode, text, code=3):
    """Prints an error record; exit code 3 means 'not available' (SKIPPED)."""
    emit({"mode": mode, "error": text})
    sys.exit(code)


def spawn_target(argv, env=None):
    """Starts `python3 <script> --role target ...`; it dies with us (stdin EOF + PDEATHSIG)."""
    def preexec():
        try:
            libc = ctypes.CDLL(None)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:
            pass
    return subprocess.Popen([sys.executable] + argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env, preexec_fn=preexec)


def read_line(proc, timeout=60):
    import select
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    if not r:
        return None
    line = proc.stdout.readline()
    return line.decode().strip() if line else None


def read_ready(proc, timeout=120):
    """The target's READY line; other lines (library logs on stdout) are skipped.
    Returns (words after READY, None) or (None, last line seen)."""
    import time as _t
    deadline = _t.time() + timeout
    last = None
    while _t.time() < deadline:
        line = read_line(proc, max(0.1, deadline - _t.time()))
        if line is None:
            break
        if line.startswith("READY"):
            return line.split()[1:], None
        if line:
            last = line
    return None, last


def stop_target(proc):
    try:
        proc.stdin.close()
    except Exception:
        pass
    try:
        proc.wait(timeout=5)
    except Exception:
        proc.kill()
        proc.wait()
