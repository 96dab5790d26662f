"""Python pull_blocks against the same pull from C++ (tools/llmdd_bench kv), alternating, same run.

Two shapes, each a blocks cache registered on a prompt process and on this
(decoder) process, pulled with scattered block lists (even blocks in two
shuffled orders, so every block is its own range, as llmdd_bench's
"scattered"):

  big:  --layers 32 x (K, V), --blocks 512 x --block-bytes 32768; a pull of
        256 blocks of every layer (512 MiB) and a pull of 1 block (2 MiB);
  tiny: 1 layer x (K, V), 4 blocks x 64 B; a pull of 1 block (128 B): the
        per-call cost of the binding on top of the C++ call.

Each round runs `llmdd_bench kv` for the shape (a child process pair) and
the Python figures (this process and its prompt child), C++ first in even
rounds and Python first in odd ones; --rounds rounds alternate so that load
from other work on the machine hits both.
Prints one JSON line per measurement and a summary with the median ratio
Python/C++ of the p50 call time and its range over the rounds.

    python bench/python_bench.py --llmdd-bench build/tools/llmdd_bench --rounds 5
"""
import argparse
import json
import mmap
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time

import numpy as np

SHAPES = {  # name -> (layers, blocks, block_bytes, blocks per call list)
    "big": (32, 512, 32768, [256, 1]),
    "tiny": (1, 4, 64, [1]),
}
PROMPT, DECODER = 1, 2
HUGE = 2 << 20


def tensors(layers, blocks, block_bytes, hugepages=True):
    """2 * layers buffers of blocks x block_bytes, each 2 MiB-aligned anonymous memory with MADV_HUGEPAGE,
    as llmdd_bench allocates them (transparent huge pages need 2 MiB-aligned ranges)."""
    out, maps = [], []
    nbytes = blocks * block_bytes
    for _ in range(2 * layers):
        # Private, as llmdd_bench maps it: mmap.mmap(-1, n) alone is MAP_SHARED
        # (shmem), which transparent huge pages skip unless shmem_enabled says so.
        m = mmap.mmap(-1, nbytes + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hugepages and hasattr(mmap, "MADV_HUGEPAGE"):
            m.madvise(mmap.MADV_HUGEPAGE)
        raw = np.frombuffer(m, dtype=np.uint8)
        offset = -int(raw.ctypes.data) % HUGE
        maps.append(m)
        out.append(raw[offset:offset + nbytes].reshape(blocks, block_bytes))
    return out, maps


def fill(arrays, blocks, salt):
    for t, a in enumerate(arrays):
        a[...] = ((salt + t * 7 + np.arange(blocks, dtype=np.int64)) % 251).astype(np.uint8)[:, None]


def options(port=None):
    from llm_datadist import LLMConfig
    config = LLMConfig()
    config.device_id = 0
    config.enable_cache_manager = True
    config.enable_remote_cache_accessible = True
    config.sync_kv_timeout = 30000
    if port:
        config.listen_ip_info = f"127.0.0.1:{port}"
    return config.generate_options()


def register(manager, cluster_id, hugepages, names):
    from llm_datadist import BlocksCacheKey, CacheDesc, DataType
    caches, keep = {}, []
    for model_id, name in enumerate(names):
        layers, blocks, block_bytes, _ = SHAPES[name]
        arrays, maps = tensors(layers, blocks, block_bytes, hugepages)
        fill(arrays, blocks, salt=0 if cluster_id == PROMPT else 100)
        desc = CacheDesc(2 * layers, [blocks, block_bytes], DataType.DT_UINT8)
        caches[name] = (manager.register_blocks_cache(desc, [int(a.ctypes.data) for a in arrays],
                                                      BlocksCacheKey(cluster_id, model_id)), arrays, model_id)
        keep.append(maps)
    return caches, keep


def prompt(port, hugepages, names, ready, done):
    from llm_datadist import LLMDataDist, LLMRole
    datadist = LLMDataDist(LLMRole.PROMPT, PROMPT)
    datadist.init(options(port))
    caches, keep = register(datadist.cache_manager, PROMPT, hugepages, names)
    ready.set()
    done.wait()
    datadist.finalize()


def scattered(count, blocks, rng):
    evens = np.arange(0, blocks, 2)
    return [int(b) for b in rng.permutation(evens)[:count]], [int(b) for b in rng.permutation(evens)[:count]]


def measure(manager, name, cache, arrays, model_id, kv_blocks, seconds, warmup, min_iters):
    from llm_datadist import BlocksCacheKey
    layers, blocks, block_bytes, _ = SHAPES[name]
    src, dst = scattered(kv_blocks, blocks, np.random.default_rng(0x77 + kv_blocks))
    key = BlocksCacheKey(PROMPT, model_id)
    for a in arrays:
        a[dst] = 255
    manager.pull_blocks(key, cache, src_blocks=src, dst_blocks=dst)
    for t, a in enumerate(arrays):  # every byte of the first call
        want = ((t * 7 + np.asarray(src)) % 251).astype(np.uint8)[:, None]
        if not (a[dst] == want).all():
            raise AssertionError(f"{name}: tensor {t} differs after the pull")
    for _ in range(warmup):
        manager.pull_blocks(key, cache, src_blocks=src, dst_blocks=dst)
    times = []
    end = time.perf_counter() + seconds
    while len(times) < min_iters or time.perf_counter() < end:
        started = time.perf_counter()
        manager.pull_blocks(key, cache, src_blocks=src, dst_blocks=dst)
        times.append(time.perf_counter() - started)
    nbytes = kv_blocks * 2 * layers * block_bytes
    p50 = statistics.median(times)
    return {"side": "python", "shape": name, "kv_blocks": kv_blocks, "bytes": nbytes, "iters": len(times),
            "p50_us": p50 * 1e6, "gbps_p50": nbytes / p50 / 1e9, "load1": os.getloadavg()[0]}


def cpp(llmdd_bench, name, seconds, hugepages):
    layers, blocks, block_bytes, kv_blocks = SHAPES[name]
    command = [llmdd_bench, "kv", "--layers", str(layers), "--blocks", str(blocks), "--block-bytes", str(block_bytes),
               "--kv-blocks", ",".join(map(str, kv_blocks)), "--ops", "pull", "--threads", "1",
               "--time", str(seconds), "--json", "--no-progress"]
    if not hugepages:
        command.append("--no-hugepages")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    out = []
    for line in result.stdout.splitlines():
        record = json.loads(line)
        out.append({"side": "cpp", "shape": name, "kv_blocks": record["kv_blocks"], "bytes": record["bytes"],
                    "iters": record["iters"], "p50_us": record["p50_us"], "gbps_p50": record["gbps_p50"],
                    "load1": record["load1"]})
    return out


def session(name, args):
    """The rounds of one shape: a prompt process and this decoder with that cache, llmdd_bench in between."""
    from llm_datadist import LLMClusterInfo, LLMDataDist, LLMRole, LLMStatusCode

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spawn = multiprocessing.get_context("spawn")
    ready, done = spawn.Event(), spawn.Event()
    peer = spawn.Process(target=prompt, args=(port, not args.no_hugepages, [name], ready, done), daemon=True)
    peer.start()
    if not ready.wait(120):
        raise SystemExit("the prompt process did not start")
    datadist = LLMDataDist(LLMRole.DECODER, DECODER)
    datadist.init(options())
    caches, keep = register(datadist.cache_manager, DECODER, not args.no_hugepages, [name])
    cluster = LLMClusterInfo()
    cluster.remote_cluster_id = PROMPT
    cluster.append_local_ip_info("127.0.0.1", 0)
    cluster.append_remote_ip_info("127.0.0.1", port)
    ret, rets = datadist.link_clusters([cluster], timeout=10000)
    assert ret == LLMStatusCode.LLM_SUCCESS, (ret, rets)
    records = []
    def run_cpp():
        return cpp(args.llmdd_bench, name, args.time, not args.no_hugepages) if args.llmdd_bench else []

    def run_python():
        cache, arrays, model_id = caches[name]
        return [measure(datadist.cache_manager, name, cache, arrays, model_id, kv_blocks, args.time, args.warmup,
                        args.min_iters) for kv_blocks in SHAPES[name][3]]

    for round_ in range(args.rounds):
        # Even rounds C++ first, odd rounds Python first: whichever runs right
        # after the other's process pair exits (freeing its memory) is not
        # always the same side.
        for side in ((run_cpp, run_python) if round_ % 2 == 0 else (run_python, run_cpp)):
            for r in side():
                r["round"] = round_
                records.append(r)
                print(json.dumps(r), flush=True)
    datadist.unlink_clusters([cluster], timeout=10000)
    datadist.finalize()
    done.set()
    peer.join(60)
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llmdd-bench", default="build/tools/llmdd_bench", help="the C++ benchmark (\"\": skip it)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--time", type=float, default=1.0, help="seconds per point")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--min-iters", type=int, default=3)
    parser.add_argument("--no-hugepages", action="store_true")
    parser.add_argument("--shapes", default="big,tiny", help="which of big, tiny")
    args = parser.parse_args()
    names = args.shapes.split(",")
    if not names or any(name not in SHAPES for name in names):
        parser.error(f"--shapes: a list of {', '.join(SHAPES)}")
    records = []
    for name in names:  # one session per shape: each side registers that shape only, as llmdd_bench does
        records += session(name, args)
    if args.llmdd_bench:
        print("# python/cpp ratio of the p50 call time per round: median [min, max]; mean load1 "
              f"{statistics.mean(r['load1'] for r in records):.2f} on {os.cpu_count()} cpus")
        for name in names:
            for kv_blocks in SHAPES[name][3]:
                ratios, py_us, cpp_us = [], [], []
                for round_ in range(args.rounds):
                    pick = {r["side"]: r for r in records
                            if r["round"] == round_ and r["shape"] == name and r["kv_blocks"] == kv_blocks}
                    ratios.append(pick["python"]["p50_us"] / pick["cpp"]["p50_us"])
                    py_us.append(pick["python"]["p50_us"])
                    cpp_us.append(pick["cpp"]["p50_us"])
                print(f"# {name} {kv_blocks} block(s): python {statistics.median(py_us):.1f} us, "
                      f"C++ {statistics.median(cpp_us):.1f} us (medians); ratio {statistics.median(ratios):.3f} "
                      f"[{min(ratios):.3f}, {max(ratios):.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
