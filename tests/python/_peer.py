"""The other process of the two-process tests: a listening "prompt" cluster.

Run by conftest.Peer through multiprocessing (spawn, a real second process).
It registers the caches of LAYOUT on numpy buffers filled with pattern(),
reports its port, then answers commands over a Pipe until told to exit:
("dump", name) -> the cache's tensors as bytes, ("reset", name) -> refill it.
"""
import socket
import traceback

import numpy as np

PROMPT_CLUSTER = 1
LAYERS = 4                 # K and V per layer: 8 tensors
BLOCKS = 16
BLOCK_ELEMENTS = 32        # float16: 64 bytes per block
ROWS = 4
ROW_ELEMENTS = 16          # int32: 64 bytes per row

# name -> (blocks cache?, num_tensors, shape, numpy dtype, key argument, remote_accessible)
LAYOUT = {
    "blocks": (True, 2 * LAYERS, [BLOCKS, BLOCK_ELEMENTS], np.float16, ("blocks", 0), None),
    "push_target": (True, 2 * LAYERS, [BLOCKS, BLOCK_ELEMENTS], np.float16, ("blocks", 1), None),
    "rows": (False, 4, [ROWS, ROW_ELEMENTS], np.int32, ("rows", 100), None),
    "hidden": (True, 2 * LAYERS, [BLOCKS, BLOCK_ELEMENTS], np.float16, ("blocks", 9), False),
}


def pattern(seed: int, shape, dtype) -> np.ndarray:
    """Deterministic bytes for (seed, shape, dtype): both processes can rebuild them."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.random.default_rng(seed).integers(0, 256, size=nbytes, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


def seed_of(cluster: int, name: str, tensor: int) -> int:
    return cluster * 1_000_003 + sum(name.encode()) * 1_009 + tensor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _options(port):
    from llm_datadist import LLMConfig
    config = LLMConfig()
    config.device_id = 0
    config.enable_cache_manager = True
    config.enable_remote_cache_accessible = True
    config.sync_kv_timeout = 5000
    config.listen_ip_info = f"127.0.0.1:{port}"
    return config.generate_options()


def serve(conn, cluster_id=PROMPT_CLUSTER):
    try:
        from llm_datadist import (BlocksCacheKey, CacheDesc, CacheKey, DataType, LLMDataDist, LLMException,
                                  LLMRole, LLMStatusCode)
        dtypes = {np.float16: DataType.DT_FLOAT16, np.int32: DataType.DT_INT32}
        datadist = None
        for _ in range(20):  # a free port may be taken before we bind it
            port = free_port()
            datadist = LLMDataDist(LLMRole.PROMPT, cluster_id)
            try:
                datadist.init(_options(port))
                break
            except LLMException as error:
                if error.status_code != LLMStatusCode.LLM_FAILED:
                    raise
        manager = datadist.cache_manager
        arrays, caches = {}, {}

        def fill(name):
            _, num_tensors, shape, dtype, _, _ = LAYOUT[name]
            for t in range(num_tensors):
                arrays[name][t][...] = pattern(seed_of(cluster_id, name, t), shape, dtype)

        for name, (is_blocks, num_tensors, shape, dtype, key, remote_accessible) in LAYOUT.items():
            arrays[name] = [np.zeros(shape, dtype=dtype) for _ in range(num_tensors)]
            fill(name)
            desc = CacheDesc(num_tensors, shape, dtypes[dtype])
            if is_blocks:
                caches[name] = manager.register_blocks_cache(desc, [int(a.ctypes.data) for a in arrays[name]],
                                                             BlocksCacheKey(cluster_id, key[1]),
                                                             remote_accessible=remote_accessible)
            else:
                keys = [CacheKey(cluster_id, key[1] + row) for row in range(shape[0])]
                caches[name] = manager.register_cache(desc, [int(a.ctypes.data) for a in arrays[name]], keys)
        conn.send(("ready", port, {name: cache.cache_id for name, cache in caches.items()}))
        while True:
            command = conn.recv()
            if command[0] == "dump":
                conn.send([a.tobytes() for a in arrays[command[1]]])
            elif command[0] == "reset":
                fill(command[1])
                conn.send("ok")
            elif command[0] == "exit":
                datadist.finalize()
                conn.send("bye")
                return
    except Exception:  # the test reads it instead of a silent hang
        conn.send(("error", traceback.format_exc()))
