#!/usr/bin/env python3
"""Report of bench/compare.sh: medians over rounds, ratios, PASS/MISS per target.

  compare_report.py RAW.jsonl [--runs N] [--load-before "a b c"] [--load-after "a b c"] [--elapsed S]

RAW.jsonl holds the JSON lines of llmdd_bench and of the reference tools (one
line per point per round). Every figure is the median over the rounds; the
spread (min..max over the rounds) is printed next to our throughputs. A
reference that was not measured makes its row SKIPPED, never a guess.
"""
import argparse
import json
import os
import platform
import statistics
import sys


def load(path):
    recs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    recs.append(json.loads(line))
                except ValueError:
                    pass
    return recs


class Data:
    def __init__(self, recs):
        self.recs = recs

    def values(self, field, **match):
        out = []
        for r in self.recs:
            if r.get("error") or r.get("skipped") or r.get("tag") == "sweep":
                continue
            if all(r.get(k) == v for k, v in match.items()):
                v = r.get(field)
                if isinstance(v, (int, float)):
                    out.append(float(v))
        return out

    def median(self, field, **match):
        v = self.values(field, **match)
        return statistics.median(v) if v else None

    def by_round(self, field, **match):
        out = {}
        for r in self.recs:
            if r.get("error") or r.get("skipped") or r.get("tag") == "sweep":
                continue
            if all(r.get(k) == v for k, v in match.items()) and isinstance(r.get(field), (int, float)):
                out.setdefault(r.get("tag"), []).append(float(r[field]))
        return {t: statistics.median(v) for t, v in out.items()}

    def paired_ratio(self, a, b):
        """Median over rounds of a/b, each pair taken in the same round (seconds
        apart), so a slow stretch of a shared host hits both sides. a, b:
        (field, match dict). None when no round has both."""
        ra, rb = self.by_round(a[0], **a[1]), self.by_round(b[0], **b[1])
        ratios = [ra[t] / rb[t] for t in ra if t in rb and rb[t]]
        return statistics.median(ratios) if ratios else None

    def spread(self, field, **match):
        v = self.values(field, **match)
        return (min(v), max(v), len(v)) if v else None

    def skipped(self, mode):
        for r in self.recs:
            if r.get("mode") == mode and r.get("skipped"):
                return r["skipped"]
        errs = [r.get("error") for r in self.recs if r.get("mode") == mode and r.get("error")]
        return errs[0] if errs else None


def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "GB/s":
        return "%.3f GB/s" % v
    if unit == "us":
        return "%.2f us" % v
    if unit == "ms":
        return "%.3f ms" % v
    if unit == "ns":
        return "%.1f ns" % v
    return "%.3g %s" % (v, unit)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("--runs", default="?")
    ap.add_argument("--load-before", default="?")
    ap.add_argument("--load-after", default="?")
    ap.add_argument("--elapsed", default="?")
    a = ap.parse_args()
    d = Data(load(a.raw))

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = "%.1f GiB" % (int(f.readline().split()[1]) / 1024 / 1024)
    except (OSError, ValueError, IndexError):
        pass
    print("== llmdd performance comparison ==")
    print("host: %d cpus, %s, %s RAM, kernel %s" % (os.cpu_count() or 0, cpu, mem, platform.release()))
    print("rounds: %s (every figure is the median over the rounds), %s s; load average before %s, after %s"
          % (a.runs, a.elapsed, a.load_before, a.load_after))
    print("raw: %s" % a.raw)
    print()

    M = 1048576
    K = 1024
    # Engine figures with the library's default options (connections 0 = default lanes).
    eng = lambda op, tr, size, batch, thr, field="gbps", conn=0: d.median(
        field, mode="engine", op=op, transport=tr, desc_size=size, batch=batch, threads=thr, connections=conn)
    memcpy = lambda op, size, batch, thr: d.median("gbps", mode="memcpy", op=op, desc_size=size, batch=batch,
                                                    threads=thr)

    # ---- reference table
    print("-- references measured on this host (medians) --")
    refs = [
        ("memcpy 1 thread, 1 MiB x 64 (hot: same buffers)", memcpy("hot", M, 64, 1), "GB/s"),
        ("memcpy 1 thread, 1 MiB x 64 (cold: walks 512 MiB)", memcpy("cold", M, 64, 1), "GB/s"),
        ("memcpy 2 threads, 1 MiB x 64 each (hot)", memcpy("hot", M, 64, 2), "GB/s"),
        ("memcpy 1 thread, 16 KiB x 4096 (hot)", memcpy("hot", 16 * K, 4096, 1), "GB/s"),
        ("memcpy 1 thread, 1 MiB x 1 (hot: stays in cache)", memcpy("hot", M, 1, 1), "GB/s"),
        ("iperf3 single stream, loopback, -l 1M", d.median("gbps", mode="iperf3"), "GB/s"),
        ("ucx_perftest ucp_get 1 MiB, UCX_TLS=tcp", d.median("gbps", mode="ucx_perftest", op="ucp_get"), "GB/s"),
        ("ucx_perftest tag_bw 1 MiB, UCX_TLS=tcp", d.median("gbps", mode="ucx_perftest", op="tag_bw"), "GB/s"),
        ("Mooncake TE (tcp) read 64 KiB x 128", d.median("gbps", mode="mooncake", desc_size=64 * K, batch=128), "GB/s"),
        ("Mooncake TE (tcp) read 1 MiB x 128", d.median("gbps", mode="mooncake", desc_size=M, batch=128), "GB/s"),
        ("NIXL UCX (tcp) read 64 KiB x 128", d.median("gbps", mode="nixl", transport="tcp", desc_size=64 * K,
                                                      batch=128), "GB/s"),
        ("NIXL UCX (tcp) read 1 MiB x 128", d.median("gbps", mode="nixl", transport="tcp", desc_size=M, batch=128),
         "GB/s"),
        ("TCP ping-pong 8 B round trip p50, busy-polling", d.median("rtt_p50_us", mode="pingpong", op="busy"), "us"),
        ("TCP ping-pong 8 B round trip p50, blocking", d.median("rtt_p50_us", mode="pingpong", op="blocking"), "us"),
    ]
    skip_of = {"iperf3": "iperf3", "ucp_get": "ucx_perftest", "tag_bw": "ucx_perftest", "Mooncake": "mooncake",
               "NIXL": "nixl"}
    for name, v, unit in refs:
        if v is None:
            why = None
            for key, mode in skip_of.items():
                if key in name:
                    why = d.skipped(mode)
            print("  %-52s SKIPPED%s" % (name, (": " + why) if why else " (not measured)"))
        else:
            print("  %-52s %s" % (name, fmt(v, unit)))
    print()

    # ---- our figures
    print("-- llmdd (medians; min..max over rounds) --")
    ours = [
        ("shm READ 1 MiB x 64, 1 thread", ("read", "shm", M, 64, 1)),
        ("shm WRITE 1 MiB x 64, 1 thread", ("write", "shm", M, 64, 1)),
        ("shm READ 1 MiB x 64, 2 threads", ("read", "shm", M, 64, 2)),
        ("shm WRITE 1 MiB x 64, 2 threads", ("write", "shm", M, 64, 2)),
        ("tcp READ 1 MiB x 64, 1 thread", ("read", "tcp", M, 64, 1)),
        ("tcp WRITE 1 MiB x 64, 1 thread", ("write", "tcp", M, 64, 1)),
        ("tcp READ 1 MiB x 64, 2 threads", ("read", "tcp", M, 64, 2)),
        ("tcp READ 64 KiB x 128, 1 thread", ("read", "tcp", 64 * K, 128, 1)),
        ("tcp WRITE 64 KiB x 128, 1 thread", ("write", "tcp", 64 * K, 128, 1)),
        ("shm READ 64 KiB x 128, 1 thread", ("read", "shm", 64 * K, 128, 1)),
        ("tcp READ 1 MiB x 1 (cache-hot, like iperf3's buffers)", ("read", "tcp", M, 1, 1)),
        ("shm READ 1 MiB x 1 (cache-hot)", ("read", "shm", M, 1, 1)),
    ]
    ours += [
        ("shm READ 1 MiB x 64, 1 thread, 1 lane", ("read", "shm", M, 64, 1, 1)),
        ("shm WRITE 1 MiB x 64, 1 thread, 1 lane", ("write", "shm", M, 64, 1, 1)),
        ("tcp READ 1 MiB x 64, 1 thread, 1 lane", ("read", "tcp", M, 64, 1, 1)),
        ("tcp WRITE 1 MiB x 64, 1 thread, 1 lane", ("write", "tcp", M, 64, 1, 1)),
    ]
    for name, key in ours:
        op, tr, size, batch, thr = key[:5]
        conn = key[5] if len(key) > 5 else 0
        v = eng(op, tr, size, batch, thr, conn=conn)
        s = d.spread("gbps", mode="engine", op=op, transport=tr, desc_size=size, batch=batch, threads=thr,
                     connections=conn)
        p50 = eng(op, tr, size, batch, thr, field="gbps_p50", conn=conn)
        print("  %-52s %s%s%s" % (name, fmt(v, "GB/s"), ("   (%.3f..%.3f, n=%d)" % s) if s else "",
                                  ("   [bytes/p50: %.3f]" % p50) if p50 else ""))
    for tr in ("shm", "tcp"):
        for op, call in (("pull", "PullKvBlocks"), ("push", "PushKvBlocks")):
            v = d.median("gbps", mode="kv", op=op, transport=tr, kv_blocks=128)
            s = d.spread("gbps", mode="kv", op=op, transport=tr, kv_blocks=128)
            print("  %-52s %s%s" % ("%s %s 128 blocks x 32 tensors x 16 KiB" % (tr, call), fmt(v, "GB/s"),
                                    ("   (%.3f..%.3f, n=%d)" % s) if s else ""))
    for tr in ("tcp", "shm"):
        v = eng("read", tr, 8, 1, 1, "p50_us")
        v99 = eng("read", tr, 8, 1, 1, "p99_us")
        print("  %-52s p50 %s, p99 %s" % ("%s READ 8 B, 1 descriptor" % tr, fmt(v, "us"), fmt(v99, "us")))
    for tr in ("tcp", "shm"):
        for op in ("read", "write"):
            v = d.median("value", mode="overhead", op="submit_per_desc_" + op, transport=tr)
            m = d.median("marginal_ns", mode="overhead", op="submit_per_desc_" + op, transport=tr)
            print("  %-52s %s (marginal %s)" % ("%s TransferSync %s 10,000 x 8 B: per descriptor" % (tr, op.upper()),
                                                fmt(v, "ns"), fmt(m, "ns")))
    for tr in ("tcp", "shm"):
        v = d.median("value", mode="overhead", op="plan_100k", transport=tr)
        sc = d.median("pull_scattered_ms", mode="overhead", op="plan_100k", transport=tr)
        ps = d.median("plan_scattered_ms", mode="overhead", op="plan_100k", transport=tr)
        print("  %-52s %s (scattered 100k blocks: %s per call, minus raw transfer %s)"
              % ("%s planning 100,000 blocks (contiguous - 1 block)" % tr, fmt(v, "ms"), fmt(sc, "ms"), fmt(ps, "ms")))
    r1 = d.median("value", mode="overhead", op="register_1region")
    rm = d.median("value", mode="overhead", op="register_many")
    rk = d.median("value", mode="overhead", op="register_kv_cache")
    mc_1, mc_2 = memcpy("hot", M, 64, 1), memcpy("hot", M, 64, 2)
    if mc_1 and mc_2:
        print("  %-52s %.2f (the ceiling for the 2-thread target)" % ("memcpy 2 threads / 1 thread, 1 MiB x 64", mc_2 / mc_1))
    for op in ("read", "write"):
        dflt = d.paired_ratio(("gbps", dict(mode="engine", op=op, transport="shm", desc_size=M, batch=64, threads=1,
                                            connections=0)),
                              ("gbps", dict(mode="engine", op=op, transport="shm", desc_size=M, batch=64, threads=1,
                                            connections=1)))
        if dflt:
            print("  %-52s %.2f (what splitting one call across lanes and cores brings)"
                  % ("shm %s 1 thread: default lanes / 1 lane" % op.upper(), dflt))
    ip_ = d.median("gbps", mode="iperf3")
    tg = d.median("gbps", mode="ucx_perftest", op="tag_bw")
    nx = d.median("gbps", mode="nixl", transport="tcp", desc_size=M, batch=128)
    tr1 = eng("read", "tcp", M, 64, 1)
    for name, ref in (("iperf3", ip_), ("UCX tag_bw", tg), ("NIXL UCX tcp 1 MiB x 128", nx)):
        if tr1 and ref:
            print("  %-52s %.2f" % ("tcp READ 1 MiB x 64 / " + name, tr1 / ref))
    hot = eng("read", "tcp", M, 1, 1)
    if hot and ip_:
        print("  %-52s %.2f" % ("tcp READ 1 MiB x 1 (cache-hot) / iperf3", hot / ip_))
    print("  %-52s %s" % ("RegisterMem 1 GiB, one region", fmt(r1, "us")))
    print("  %-52s %s" % ("RegisterMem 10,000 regions of 4 KiB (total)", fmt(rm, "ms")))
    print("  %-52s %s" % ("RegisterKvCache 32 tensors x 512 x 16 KiB", fmt(rk, "us")))
    print()

    # ---- targets
    print("-- targets --")
    rows = []

    def ratio_row(name, ours_v, ref_v, ref_name, need, higher=True, skip_mode=None, pair=None):
        if ours_v is None or ref_v is None:
            why = d.skipped(skip_mode) if skip_mode else None
            rows.append((name, fmt(ours_v, "GB/s") if ours_v is not None else "-", ref_name, "-",
                         ("%s %.2f" % (">=" if higher else "<=", need)),
                         "SKIPPED" + ((": " + why) if why else "")))
            return
        # The verdict uses the median of per-round ratios where both sides were
        # measured in the same round (robust to the host's load drifting).
        ratio = (d.paired_ratio(*pair) if pair else None) or ours_v / ref_v
        ok = ratio >= need if higher else ratio <= need
        rows.append((name, None, ref_name, "%.2f" % ratio, ("%s %.2f" % (">=" if higher else "<=", need)),
                     "PASS" if ok else "MISS (%+.0f%%)" % ((ratio / need - 1) * 100)))
        return ratio

    def abs_row(name, v, unit, limit):
        if v is None:
            rows.append((name, "-", "-", "-", "<= %s" % fmt(limit, unit), "SKIPPED (not measured)"))
            return
        ok = v <= limit
        rows.append((name, fmt(v, unit), "-", "-", "<= %s" % fmt(limit, unit),
                     "PASS" if ok else "MISS (%.1fx the limit)" % (v / limit)))

    mc1 = memcpy("hot", M, 64, 1)
    for op in ("read", "write"):
        v = eng(op, "shm", M, 64, 1)
        ratio_row("shm %s 1 MiB x 64, 1 thr vs memcpy 1 thr" % op.upper(), v, mc1,
                  "memcpy %s" % fmt(mc1, "GB/s"), 0.75,
                  pair=(("gbps", dict(mode="engine", op=op, transport="shm", desc_size=M, batch=64, threads=1,
                                      connections=0)),
                        ("gbps", dict(mode="memcpy", op="hot", desc_size=M, batch=64, threads=1))))
        rows[-1] = (rows[-1][0], fmt(v, "GB/s"),) + rows[-1][2:]
    for op in ("read", "write"):
        v1, v2 = eng(op, "shm", M, 64, 1), eng(op, "shm", M, 64, 2)
        ratio_row("shm %s 1 MiB x 64, 2 thr vs 1 thr" % op.upper(), v2, v1, "1 thr %s" % fmt(v1, "GB/s"), 1.4,
                  pair=(("gbps", dict(mode="engine", op=op, transport="shm", desc_size=M, batch=64, threads=2,
                                      connections=0)),
                        ("gbps", dict(mode="engine", op=op, transport="shm", desc_size=M, batch=64, threads=1,
                                      connections=0))))
        rows[-1] = (rows[-1][0], fmt(v2, "GB/s"),) + rows[-1][2:]
    kvp = d.median("gbps", mode="kv", op="pull", transport="shm", kv_blocks=128)
    shm_read = eng("read", "shm", M, 64, 1)
    ratio_row("shm PullKvBlocks 4096 x 16 KiB vs READ 1 MiB x 64", kvp, shm_read,
              "READ %s" % fmt(shm_read, "GB/s"), 0.5,
              pair=(("gbps", dict(mode="kv", op="pull", transport="shm", kv_blocks=128)),
                    ("gbps", dict(mode="engine", op="read", transport="shm", desc_size=M, batch=64, threads=1,
                                  connections=0))))
    rows[-1] = (rows[-1][0], fmt(kvp, "GB/s"),) + rows[-1][2:]
    tcp_read = eng("read", "tcp", M, 64, 1)
    ip = d.median("gbps", mode="iperf3")
    ratio_row("tcp READ 1 MiB x 64 vs iperf3 1 stream", tcp_read, ip, "iperf3 %s" % fmt(ip, "GB/s"), 0.8,
              skip_mode="iperf3", pair=(("gbps", dict(mode="engine", op="read", transport="tcp", desc_size=M, batch=64, threads=1, connections=0)), ("gbps", dict(mode="iperf3"))))
    rows[-1] = (rows[-1][0], fmt(tcp_read, "GB/s"),) + rows[-1][2:]
    ug = d.median("gbps", mode="ucx_perftest", op="ucp_get")
    ratio_row("tcp READ 1 MiB x 64 vs UCX ucp_get (tcp)", tcp_read, ug, "ucp_get %s" % fmt(ug, "GB/s"), 5.0,
              skip_mode="ucx_perftest", pair=(("gbps", dict(mode="engine", op="read", transport="tcp", desc_size=M, batch=64, threads=1, connections=0)), ("gbps", dict(mode="ucx_perftest", op="ucp_get"))))
    rows[-1] = (rows[-1][0], fmt(tcp_read, "GB/s"),) + rows[-1][2:]
    t64 = eng("read", "tcp", 64 * K, 128, 1)
    ratio_row("tcp READ 64 KiB x 128 vs Mooncake published", t64, 0.9, "0.9 GB/s (published)", 2.5)
    rows[-1] = (rows[-1][0], fmt(t64, "GB/s"),) + rows[-1][2:]
    mc = d.median("gbps", mode="mooncake", desc_size=64 * K, batch=128)
    ratio_row("tcp READ 64 KiB x 128 vs Mooncake measured", t64, mc, "Mooncake %s" % fmt(mc, "GB/s"), 2.5,
              skip_mode="mooncake",
              pair=(("gbps", dict(mode="engine", op="read", transport="tcp", desc_size=64 * K, batch=128, threads=1,
                                  connections=0)),
                    ("gbps", dict(mode="mooncake", desc_size=64 * K, batch=128))))
    rows[-1] = (rows[-1][0], fmt(t64, "GB/s"),) + rows[-1][2:]
    lat = eng("read", "tcp", 8, 1, 1, "p50_us")
    rtt = d.median("rtt_p50_us", mode="pingpong", op="busy")
    ratio_row("tcp READ 8 B p50 vs busy ping-pong RTT p50", lat, rtt, "RTT %s" % fmt(rtt, "us"), 2.0, higher=False,
              pair=(("p50_us", dict(mode="engine", op="read", transport="tcp", desc_size=8, batch=1, threads=1,
                                    connections=0)),
                    ("rtt_p50_us", dict(mode="pingpong", op="busy"))))
    rows[-1] = (rows[-1][0], fmt(lat, "us"),) + rows[-1][2:]
    abs_row("shm READ 8 B p50", eng("read", "shm", 8, 1, 1, "p50_us"), "us", 10.0)
    for tr in ("shm", "tcp"):
        abs_row("%s planning 100,000 blocks" % tr, d.median("value", mode="overhead", op="plan_100k", transport=tr),
                "ms", 10.0)
    for tr in ("tcp", "shm"):
        for op in ("read", "write"):
            abs_row("%s submit cost per descriptor (%s)" % (tr, op.upper()),
                    d.median("value", mode="overhead", op="submit_per_desc_" + op, transport=tr), "ns", 200.0)

    w = [max(len(str(r[i])) for r in rows) for i in range(6)]
    hdr = ("target", "ours", "reference", "ratio", "need", "verdict")
    w = [max(w[i], len(hdr[i])) for i in range(6)]
    line = "  ".join("%-*s" % (w[i], hdr[i]) for i in range(6))
    print("  " + line)
    print("  " + "-" * len(line))
    for r in rows:
        print("  " + "  ".join("%-*s" % (w[i], r[i]) for i in range(6)))
    passed = sum(1 for r in rows if r[5] == "PASS")
    missed = sum(1 for r in rows if r[5].startswith("MISS"))
    skipped = sum(1 for r in rows if r[5].startswith("SKIPPED"))
    print()
    print("%d PASS, %d MISS, %d SKIPPED" % (passed, missed, skipped))


if __name__ == "__main__":
    sys.exit(main())
