#!/usr/bin/env python3
"""Tests of bench/compare_report.py on made-up raw records (ctest bench_report).

What they hold the report to: the ratio column is the median of per-round
paired ratios (for an even count the less favourable middle one) with its
min..max; the
"ours" and "reference" columns are that median round's two figures (so they
divide to the ratio, which the medians of each side need not do); a MISS, or
a failure record of ours, makes the exit status 1; a reference that was not
measured makes its row SKIPPED and fails nothing.
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare_report as cr  # noqa: E402

M = 1048576


def eng(r, op, tr, size, batch, conn=0, **fig):
    rec = {"mode": "engine", "op": op, "transport": tr, "desc_size": size, "batch": batch, "threads": 1,
           "connections": conn, "tag": "round=%d" % r, "checked": "first,last"}
    rec.update(fig)
    return rec


def memcpy(r, size, batch, thr, gbps):
    return {"mode": "memcpy", "op": "hot", "desc_size": size, "batch": batch, "threads": thr, "gbps": gbps,
            "tag": "round=%d" % r}


def busy_rtt(r, us):
    return {"mode": "pingpong", "op": "busy", "rtt_p50_us": us, "tag": "round=%d" % r}


META = {"mode": "meta", "lanes": 4, "allcore_threads": 2, "nproc": 2, "kv_blocks": 256}


def row(rows, name):
    for r in rows:
        if r.name == name:
            return r
    raise AssertionError("no row %r in %s" % (name, [r.name for r in rows]))


def run_cli(recs):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
        path = f.name
    try:
        p = subprocess.run([sys.executable, os.path.join(HERE, "compare_report.py"), path], capture_output=True,
                           text=True)
    finally:
        os.unlink(path)
    return p.returncode, p.stdout


class PairedRatios(unittest.TestCase):
    def test_median_round_is_shown_and_divides_to_the_ratio(self):
        # Per-round ratios 1.0, 1.2, 0.667 -> median 1.0 (round 1: 10 / 10). The
        # medians of each side (8 and 10) would divide to 0.8: not what is shown.
        recs = [META]
        for r, ours, ref in ((1, 10.0, 10.0), (2, 6.0, 5.0), (3, 8.0, 12.0)):
            recs.append(eng(r, "read", "shm", M, 64, gbps=ours))
            recs.append(memcpy(r, M, 64, 2, ref))
        rows = cr.evaluate(cr.Data(recs))
        x = row(rows, "shm READ 1 MiB x 64 vs memcpy 2 thr")
        self.assertEqual(x.ours, "10.000 GB/s")
        self.assertEqual(x.ref, "10.000 GB/s")
        self.assertEqual(x.ratio, "1.00 (0.67..1.20, n=3)")
        self.assertEqual(x.verdict, "PASS")

    def test_even_count_takes_the_less_favourable_middle_ratio(self):
        # Latency (lower is better): ratios 2, 3, 1.2, 4 -> middle ones 2 and 3 -> 3.
        recs = [META]
        for r, ours in ((1, 20.0), (2, 30.0), (3, 12.0), (4, 40.0)):
            recs.append(eng(r, "read", "tcp", 8, 1, p50_us=ours))
            recs.append(busy_rtt(r, 10.0))
        x = row(cr.evaluate(cr.Data(recs)), "tcp READ 8 B p50 vs TCP ping-pong RTT (best of busy, blocking)")
        self.assertEqual(x.ratio, "3.00 (1.20..4.00, n=4)")
        self.assertEqual((x.ours, x.ref), ("30.00 us", "10.00 us"))
        self.assertTrue(x.verdict.startswith("MISS"), x.verdict)  # latency: ratio must be <= 1.5
        # Throughput (higher is better): ratios 0.5, 1.0 -> 0.5.
        recs = [META]
        for r, ours in ((1, 5.0), (2, 10.0)):
            recs.append(eng(r, "read", "shm", M, 64, gbps=ours))
            recs.append(memcpy(r, M, 64, 2, 10.0))
        x = row(cr.evaluate(cr.Data(recs)), "shm READ 1 MiB x 64 vs memcpy 2 thr")
        self.assertEqual(x.ratio, "0.50 (0.50..1.00, n=2)")

    def test_rounds_without_both_sides_are_not_paired(self):
        recs = [META, eng(1, "read", "shm", M, 64, gbps=10.0), memcpy(2, M, 64, 2, 10.0)]
        x = row(cr.evaluate(cr.Data(recs)), "shm READ 1 MiB x 64 vs memcpy 2 thr")
        self.assertTrue(x.verdict.startswith("SKIPPED: no round has both sides"), x.verdict)


class Verdicts(unittest.TestCase):
    def test_pass_and_skipped_exit_zero(self):
        recs = [META, {"mode": "iperf3", "skipped": "iperf3 is not installed"}]
        for r in (1, 2, 3):
            recs.append(eng(r, "read", "shm", M, 64, gbps=9.5))
            recs.append(memcpy(r, M, 64, 2, 10.0))
            recs.append(eng(r, "read", "tcp", M, 64, conn=1, gbps=5.0))
        rows = cr.evaluate(cr.Data(recs))
        x = row(rows, "tcp READ 1 MiB x 64, 1 lane vs iperf3 -P 1")
        self.assertEqual(x.verdict, "SKIPPED: iperf3 is not installed")
        rc, out = run_cli(recs)
        self.assertEqual(rc, 0, out)
        self.assertIn("result: PASS", out)

    def test_a_miss_fails_the_run(self):
        recs = [META]
        for r in (1, 2, 3):
            recs.append(eng(r, "read", "shm", M, 64, gbps=5.0))
            recs.append(memcpy(r, M, 64, 2, 10.0))
        rc, out = run_cli(recs)
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r"shm READ 1 MiB x 64 vs memcpy 2 thr .*MISS \(-44%\)")
        self.assertIn("result: FAIL", out)

    def test_a_failure_of_ours_fails_the_run_and_has_no_figure(self):
        recs = [META]
        for r in (1, 2, 3):
            recs.append(memcpy(r, M, 64, 2, 10.0))
            bad = eng(r, "write", "shm", M, 64)
            bad["error"] = "bytes wrong after the first call: 64 bytes in the peer's memory differ"
            del bad["checked"]
            recs.append(bad)
        x = row(cr.evaluate(cr.Data(recs)), "shm WRITE 1 MiB x 64 vs memcpy 2 thr")
        self.assertTrue(x.verdict.startswith("ERROR: bytes wrong"), x.verdict)
        self.assertEqual(x.ours, "-")
        rc, out = run_cli(recs)
        self.assertEqual(rc, 1, out)
        self.assertIn("failures of ours", out)

    def test_a_crashed_bench_fails_the_run(self):
        recs = [META, {"mode": "llmdd_bench", "op": "kv", "tag": "round=1", "error": "llmdd_bench kv exited with 139"}]
        rc, out = run_cli(recs)
        self.assertEqual(rc, 1, out)


class PingPong(unittest.TestCase):
    def test_tcp_latency_reference_is_the_faster_ping_pong_of_each_round(self):
        # Round 1: busy-polling starved (8 ms, as on a loaded machine), blocking 10 us;
        # round 2: busy 8 us. A slowed engine (8.5 ms) must not pass against 8 ms.
        recs = [META]
        for r, busy, blocking in ((1, 8000.0, 10.0), (2, 8.0, 12.0)):
            recs.append(eng(r, "read", "tcp", 8, 1, p50_us=8500.0))
            recs.append(busy_rtt(r, busy))
            recs.append({"mode": "pingpong", "op": "blocking", "rtt_p50_us": blocking, "tag": "round=%d" % r})
        rows = cr.evaluate(cr.Data(recs))
        x = row(rows, "tcp READ 8 B p50 vs TCP ping-pong RTT (best of busy, blocking)")
        self.assertEqual(x.ratio, "1062.50 (850.00..1062.50, n=2)")
        self.assertTrue(x.verdict.startswith("MISS"), x.verdict)
        self.assertEqual(row(rows, "tcp READ 8 B p50 vs busy ping-pong RTT").verdict, "info")


class References(unittest.TestCase):
    """Each reference is measured in the run or reads "not measured"; none is a constant."""

    def te(self, r, size, gbps):
        return {"mode": "mooncake_bench", "op": "read", "transport": "tcp", "desc_size": size, "batch": 128,
                "threads": 1, "gbps": gbps, "tag": "round=%d" % r}

    def test_mooncake_target_is_its_own_bench_of_the_same_run(self):
        recs = [META]
        for r, (ours, ref) in enumerate(((4.0, 1.0), (3.5, 1.4), (2.0, 1.0)), 1):
            recs.append(eng(r, "read", "tcp", 65536, 128, gbps=ours))
            recs.append(self.te(r, 65536, ref))
        x = row(cr.evaluate(cr.Data(recs)), "tcp READ 64 KiB x 128 vs Mooncake transfer_engine_bench")
        # Per-round ratios 4.0, 2.5, 2.0: the median is 2.5 (round 2), under the need of 3.
        self.assertEqual(x.ratio, "2.50 (2.00..4.00, n=3)")
        self.assertEqual((x.ours, x.ref), ("3.500 GB/s", "1.400 GB/s"))
        self.assertTrue(x.verdict.startswith("MISS"), x.verdict)

    def test_kv_pull_of_mallocmem_caches_is_its_own_row_and_never_mixed(self):
        def kv(r, op, tr, gbps, **extra):
            rec = {"mode": "kv", "op": op, "transport": tr, "kv_blocks": 256, "gbps": gbps, "tag": "round=%d" % r,
                   "checked": "first,last"}
            if op != "memcpy":
                rec["threads"] = 1
            rec.update(extra)
            return rec
        recs = [META]
        for r in (1, 2, 3):
            recs.append(kv(r, "pull", "shm", 8.0))                       # private memory: process_vm_readv
            recs.append(kv(r, "pull", "shm", 12.0, memory="mallocmem"))  # MallocMem caches: mapped
            recs.append(kv(r, "memcpy", "local", 10.0, copy_threads=2))
        rows = cr.evaluate(cr.Data(recs))
        plain = row(rows, "shm PullKvBlocks vs memcpy same pieces 2 thr")
        mapped = row(rows, "shm PullKvBlocks, MallocMem caches, vs memcpy same pieces 2 thr")
        self.assertEqual(plain.ratio, "0.80 (0.80..0.80, n=3)")
        self.assertTrue(plain.verdict.startswith("MISS"), plain.verdict)
        self.assertEqual(mapped.ratio, "1.20 (1.20..1.20, n=3)")
        self.assertTrue(mapped.verdict.startswith("PASS"), mapped.verdict)

    def test_mooncake_without_its_bench_is_not_measured(self):
        why = "Mooncake's transfer_engine_bench is not installed"
        recs = [META, {"mode": "mooncake_bench", "skipped": why}]
        for r in (1, 2, 3):
            recs.append(eng(r, "read", "tcp", 65536, 128, gbps=3.0))
            # The Python API peer is information: it does not stand in for the bench.
            recs.append({"mode": "mooncake", "op": "read", "transport": "tcp", "desc_size": 65536, "batch": 128,
                         "gbps": 0.5, "tag": "round=%d" % r})
        rows = cr.evaluate(cr.Data(recs))
        x = row(rows, "tcp READ 64 KiB x 128 vs Mooncake transfer_engine_bench")
        self.assertEqual(x.verdict, "SKIPPED: " + why)
        self.assertEqual(row(rows, "tcp READ 64 KiB x 128 vs Mooncake TE Python API").ratio, "6.00 (6.00..6.00, n=3)")
        rc, out = run_cli(recs)
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"Mooncake transfer_engine_bench \(tcp, 1 thr\) read 64 KiB x 128 +not measured: "
                              r"Mooncake's transfer_engine_bench is not installed")

    def test_ucx_on_another_transport_than_named_is_not_measured(self):
        err = "UCX did not use cma (lanes: rma(posix/memory))"
        recs = [META]
        for r in (1, 2):
            recs.append(eng(r, "read", "shm", M, 1, gbps=9.0))
            recs.append({"mode": "ucx_perftest", "op": "ucp_get", "transport": "cma", "desc_size": M, "batch": 1,
                         "threads": 1, "tag": "round=%d" % r, "error": err})
        rows = cr.evaluate(cr.Data(recs))
        self.assertEqual(row(rows, "shm READ 1 MiB x 1 vs UCX ucp_get cma").verdict, "SKIPPED: " + err)
        rc, out = run_cli(recs)
        self.assertEqual(rc, 0, out)  # a reference's failure is not ours
        self.assertIn("UCX ucp_get 1 MiB, cma (same host)", out)
        self.assertRegex(out, r"UCX ucp_get 1 MiB, cma \(same host\) +not measured: UCX did not use cma")


def ucx_ours(r, op, tls, gbps):
    rec = eng(r, op, "ucx", M, 1, gbps=gbps)
    rec["ucx_tls"] = tls
    return rec


def ucx_ref(r, op, tls, gbps):
    return {"mode": "ucx_ref", "op": op, "transport": "ucx", "ucx_tls": tls, "desc_size": M, "batch": 1,
            "threads": 1, "gbps": gbps, "tag": "round=%d" % r}


class UcxPairs(unittest.TestCase):
    def test_ours_over_ucx_pairs_with_ucx_alone_of_the_same_ucx_tls(self):
        # tcp: ours 0.95 / 1.0 -> PASS; sm,tcp: ours 0.5 / 1.0 -> MISS. A record
        # of the other UCX_TLS in the same round must not be taken as the pair.
        recs = [META]
        for r in (1, 2, 3):
            recs += [ucx_ours(r, "read", "tcp", 0.95), ucx_ref(r, "get", "tcp", 1.0),
                     ucx_ours(r, "read", "sm,tcp", 0.5), ucx_ref(r, "get", "sm,tcp", 1.0)]
        rows = cr.evaluate(cr.Data(recs))
        x = row(rows, "ucx READ 1 MiB x 1 (UCX_TLS=tcp) vs UCX ucp_get_nbx, user memory")
        self.assertEqual((x.ratio, x.verdict), ("0.95 (0.95..0.95, n=3)", "PASS"))
        x = row(rows, "ucx READ 1 MiB x 1 (UCX_TLS=sm,tcp) vs UCX ucp_get_nbx, user memory")
        self.assertEqual((x.ratio, x.verdict), ("0.50 (0.50..0.50, n=3)", "MISS (-44%)"))
        rc, out = run_cli(recs)
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r"UCX ucp_get_nbx 1 MiB, user memory, sm,tcp +1.000 GB/s")

    def test_without_the_reference_program_the_pairs_are_not_measured(self):
        why = "llmdd_ucx_ref is not built (the library was built without UCX: bash scripts/setup.sh ucx)"
        recs = [META, {"mode": "ucx_ref", "skipped": why}]
        rows = cr.evaluate(cr.Data(recs))
        x = row(rows, "ucx WRITE 1 MiB x 1 (UCX_TLS=tcp) vs UCX ucp_put_nbx, user memory")
        self.assertEqual(x.verdict, "SKIPPED: ours not measured")
        rc, out = run_cli(recs)
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"UCX ucp_put_nbx 1 MiB, user memory, tcp +not measured: llmdd_ucx_ref is not built")


if __name__ == "__main__":
    unittest.main()
