"""A vLLM-style prefill/decode disaggregation connector on llm_datadist and hixl.

Two processes, as a disaggregated serving deployment runs them:

* the prefill worker owns a paged KV cache: for each of `layers` layers a K and
  a V tensor of `num_blocks` blocks, registered once with
  `register_blocks_cache`. For every request it "computes" the KV of the
  prompt into the blocks its scheduler allocated (a deterministic pattern
  here), then hands the request over: (request id, its block ids).
* the decode worker owns a cache of the same geometry. For each request it
  takes blocks from its own free list and pulls the prefill's blocks into
  them with `pull_blocks`, one layer at a time (what a model runner that
  starts layer 0 while later layers arrive does), and each layer is known to
  have landed when its pull returns. It then verifies every byte and tells
  the prefill worker with a hixl notify that the request's blocks may be
  freed, which the prefill worker picks up with `get_notifies`.

It prints the pull throughput in GB/s. numpy buffers by default; with
`--backend torch` (or `auto` when torch is importable) the caches are torch
CPU tensors, registered through `tensor.data_ptr()`.

    python examples/python/disagg_connector.py --requests 8 --layers 8
"""
import argparse
import multiprocessing
import socket
import sys
import time

import numpy as np

import hixl
from llm_datadist import (BlocksCacheKey, CacheDesc, DataType, LLMClusterInfo, LLMConfig, LLMDataDist, LLMRole,
                          LLMStatusCode)

PREFILL, DECODE = 1, 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PagedKVCache:
    """num_blocks x layers x (K, V) blocks of block_elems float16, in 2 * layers tensors."""

    def __init__(self, args, backend):
        self.layers, self.num_blocks, self.block_elems = args.layers, args.num_blocks, args.block_kib * 512
        self.backend = backend
        shape = (self.num_blocks, self.block_elems)
        if backend == "torch":
            import torch
            self.tensors = [torch.zeros(shape, dtype=torch.float16) for _ in range(2 * self.layers)]
            self.addrs = [t.data_ptr() for t in self.tensors]
        else:
            self.tensors = [np.zeros(shape, dtype=np.float16) for _ in range(2 * self.layers)]
            self.addrs = [int(t.ctypes.data) for t in self.tensors]
        self.desc = CacheDesc(2 * self.layers, list(shape), DataType.DT_FLOAT16)
        self.cache = None

    def register(self, manager, cluster_id):
        self.cache = manager.register_blocks_cache(self.desc, self.addrs, BlocksCacheKey(cluster_id, 0))

    def block(self, tensor, block_id):
        """The bytes of one block of one tensor, as a numpy uint8 view."""
        t = self.tensors[tensor]
        raw = t.numpy() if self.backend == "torch" else t
        return raw[block_id].view(np.uint8)


def kv_pattern(request_id, tensor, position, nbytes):
    """What the "model" writes for token block `position` of a request into `tensor`."""
    return np.random.default_rng((request_id, tensor, position)).integers(0, 256, nbytes, dtype=np.uint8)


def options(listen_port=None):
    config = LLMConfig()
    config.device_id = 0
    config.enable_cache_manager = True
    config.enable_remote_cache_accessible = True
    config.sync_kv_timeout = 30000
    if listen_port is not None:
        config.listen_ip_info = f"127.0.0.1:{listen_port}"
    return config.generate_options()


def prefill_worker(args, backend, ports, ready, handoff, finished, unlinked):
    """Registers the KV cache, runs the requests' prefills, frees blocks on the decoder's notify."""
    datadist = LLMDataDist(LLMRole.PROMPT, PREFILL)
    datadist.init(options(ports["datadist"]))
    notifier = hixl.Hixl()
    assert notifier.initialize(f"127.0.0.1:{ports['hixl']}") == hixl.SUCCESS
    kv = PagedKVCache(args, backend)
    kv.register(datadist.cache_manager, PREFILL)
    ready.set()
    free = list(range(kv.num_blocks))
    in_flight = {}
    nbytes = kv.block_elems * 2
    for request_id in range(args.requests):
        while len(free) < args.blocks_per_request:  # the cache is full: wait for the decoder to release blocks
            in_flight, free = reap(notifier, in_flight, free)
            time.sleep(0.001)
        blocks = [free.pop() for _ in range(args.blocks_per_request)]  # scattered, as a block allocator leaves them
        for tensor in range(2 * kv.layers):
            for position, block_id in enumerate(blocks):
                kv.block(tensor, block_id)[:] = kv_pattern(request_id, tensor, position, nbytes)
        in_flight[request_id] = blocks
        handoff.put((request_id, blocks))  # the scheduler's kv_transfer_params
    handoff.put(None)
    deadline = time.monotonic() + 60
    while in_flight and time.monotonic() < deadline:
        in_flight, free = reap(notifier, in_flight, free)
        time.sleep(0.001)
    finished.put(("prefill", sorted(in_flight)))
    unlinked.wait(60)  # finalizing while the decoder still unlinks would fail its unlink
    notifier.finalize()
    datadist.finalize()


def reap(notifier, in_flight, free):
    """Frees the blocks of the requests the decoder said it has pulled."""
    ret, notifies = notifier.get_notifies()
    assert ret == hixl.SUCCESS, ret
    for notify in notifies:
        request_id = int(notify.notify_msg)
        free.extend(in_flight.pop(request_id))
    return in_flight, free


class DecodeConnector:
    """The decode side: pulls a request's blocks layer by layer, then releases them on the prefill side."""

    def __init__(self, args, backend, ports):
        self.datadist = LLMDataDist(LLMRole.DECODER, DECODE)
        self.datadist.init(options())
        self.kv = PagedKVCache(args, backend)
        self.kv.register(self.datadist.cache_manager, DECODE)
        self.free = list(range(self.kv.num_blocks))
        self.cluster = LLMClusterInfo()
        self.cluster.remote_cluster_id = PREFILL
        self.cluster.append_local_ip_info("127.0.0.1", 0)
        self.cluster.append_remote_ip_info("127.0.0.1", ports["datadist"])
        ret, rets = self.datadist.link_clusters([self.cluster], timeout=10000)
        assert ret == LLMStatusCode.LLM_SUCCESS, (ret, rets)
        self.notifier = hixl.Hixl()
        assert self.notifier.initialize("127.0.0.1") == hixl.SUCCESS
        self.prefill_engine = f"127.0.0.1:{ports['hixl']}"
        assert self.notifier.connect(self.prefill_engine, timeout_in_millis=10000) == hixl.SUCCESS
        self.pulled_bytes, self.pull_seconds = 0, 0.0

    def start_load_kv(self, request_id, remote_blocks):
        """Pulls every layer of the request into newly allocated local blocks; returns them."""
        local_blocks = [self.free.pop() for _ in remote_blocks]
        manager = self.datadist.cache_manager
        key = BlocksCacheKey(PREFILL, 0)
        for layer in range(self.kv.layers):
            started = time.perf_counter()
            manager.pull_blocks(key, self.kv.cache, src_blocks=remote_blocks, dst_blocks=local_blocks,
                                src_layer_range=range(layer, layer + 1), dst_layer_range=range(layer, layer + 1),
                                tensor_num_per_layer=2)
            self.pull_seconds += time.perf_counter() - started
            self.wait_for_layer_load(layer)
        self.pulled_bytes += len(remote_blocks) * self.kv.layers * 2 * self.kv.block_elems * 2
        return local_blocks

    def wait_for_layer_load(self, layer):
        """The layer's K and V are here once its pull returned; a model runner would start the layer now."""

    def verify(self, request_id, local_blocks):
        nbytes = self.kv.block_elems * 2
        for tensor in range(2 * self.kv.layers):
            for position, block_id in enumerate(local_blocks):
                if not np.array_equal(self.kv.block(tensor, block_id), kv_pattern(request_id, tensor, position, nbytes)):
                    raise AssertionError(f"request {request_id}: tensor {tensor} block {block_id} differs")

    def request_finished(self, request_id, local_blocks):
        """Tells the prefill worker it may free the request's blocks; frees the local ones (decoding is done)."""
        ret = self.notifier.send_notify(self.prefill_engine, hixl.NotifyDesc("free_blocks", str(request_id)),
                                        timeout_in_millis=10000)
        assert ret == hixl.SUCCESS, ret
        self.free.extend(local_blocks)

    def close(self):
        self.notifier.finalize()
        ret, _ = self.datadist.unlink_clusters([self.cluster], timeout=10000)
        assert ret == LLMStatusCode.LLM_SUCCESS, ret
        self.datadist.finalize()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--blocks-per-request", type=int, default=32)
    parser.add_argument("--num-blocks", type=int, default=128, help="blocks per tensor on each side")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--block-kib", type=int, default=16, help="KiB per block of one K or V tensor")
    parser.add_argument("--backend", choices=["auto", "numpy", "torch"], default="auto")
    args = parser.parse_args(argv)
    if args.blocks_per_request > args.num_blocks:
        parser.error("--blocks-per-request must be at most --num-blocks")
    backend = args.backend
    if backend == "auto":
        try:
            import torch  # noqa: F401
            backend = "torch"
        except ImportError:
            backend = "numpy"

    ports = {"datadist": free_port(), "hixl": free_port()}
    spawn = multiprocessing.get_context("spawn")
    ready, unlinked, handoff, finished = spawn.Event(), spawn.Event(), spawn.Queue(), spawn.Queue()
    prefill = spawn.Process(target=prefill_worker, args=(args, backend, ports, ready, handoff, finished, unlinked),
                            daemon=True)
    prefill.start()
    if not ready.wait(60):
        raise SystemExit("the prefill worker did not start")
    decode = DecodeConnector(args, backend, ports)
    while True:
        handed = handoff.get(timeout=60)
        if handed is None:
            break
        request_id, remote_blocks = handed
        local_blocks = decode.start_load_kv(request_id, remote_blocks)
        decode.verify(request_id, local_blocks)
        decode.request_finished(request_id, local_blocks)
    gbps = decode.pulled_bytes / decode.pull_seconds / 1e9
    decode.close()
    unlinked.set()
    _, unfreed = finished.get(timeout=60)
    prefill.join(60)
    if prefill.exitcode != 0 or unfreed:
        raise SystemExit(f"prefill worker failed (exit {prefill.exitcode}, requests not freed: {unfreed})")
    print(f"disagg_connector ({backend}): {args.requests} requests x {args.blocks_per_request} blocks x "
          f"{args.layers} layers x K/V x {args.block_kib} KiB pulled layer by layer, every byte verified, "
          f"{decode.pulled_bytes / 2**20:.1f} MiB at {gbps:.2f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
