"""Pull and push of blocks and caches between two processes, verified byte by byte.

This process is the decoder (cluster 2, numpy buffers); the peer process
(_peer.py) is the listening prompt (cluster 1). Every transfer is checked
against a model built from the same deterministic patterns: the bytes named
are copied, and no other byte of either side changed.
"""
import numpy as np
import pytest

from _peer import BLOCKS, BLOCK_ELEMENTS, LAYERS, ROW_ELEMENTS, ROWS, pattern, seed_of
from conftest import cluster, options
from llm_datadist import (BlocksCacheKey, CacheDesc, CacheKey, CacheKeyByIdAndIndex, DataType, LLMDataDist,
                          LLMException, LLMRole, LLMStatusCode, Placement)

TENSORS = 2 * LAYERS
DECODER = 2


def peer_tensors(peer, name, num_tensors, shape, dtype):
    """The peer's tensors as they were registered (before any push)."""
    return [pattern(seed_of(peer.cluster_id, name, t), shape, dtype) for t in range(num_tensors)]


def blocks_cache(manager, key=None, fill_seed=None):
    """A decoder blocks cache on numpy buffers (zeros, or a pattern)."""
    arrays = [np.zeros((BLOCKS, BLOCK_ELEMENTS), dtype=np.float16) for _ in range(TENSORS)]
    if fill_seed is not None:
        for t, a in enumerate(arrays):
            a[...] = pattern(fill_seed + t, a.shape, a.dtype)
    desc = CacheDesc(TENSORS, [BLOCKS, BLOCK_ELEMENTS], DataType.DT_FLOAT16, Placement.DEVICE)
    # numpy arrays in addrs: the package reads their addresses and checks their lengths.
    cache = manager.register_blocks_cache(desc, arrays, key)
    return cache, arrays


def link(datadist, peer):
    ret, rets = datadist.link_clusters([cluster(peer.cluster_id, peer.port)], timeout=5000)
    assert (ret, rets) == (LLMStatusCode.LLM_SUCCESS, [LLMStatusCode.LLM_SUCCESS])


def unlink(datadist, peer):
    ret, rets = datadist.unlink_clusters([cluster(peer.cluster_id, peer.port)], timeout=5000)
    assert (ret, rets) == (LLMStatusCode.LLM_SUCCESS, [LLMStatusCode.LLM_SUCCESS])


def assert_bytes_equal(actual, expected, what):
    a = np.ascontiguousarray(actual).view(np.uint8).ravel()
    e = np.ascontiguousarray(expected).view(np.uint8).ravel()
    assert a.shape == e.shape, what
    diff = np.flatnonzero(a != e)
    assert diff.size == 0, f"{what}: {diff.size} bytes differ, first at byte {diff[0]}"


def test_pull_blocks_with_layer_ranges(peer, decoder):
    manager = decoder.cache_manager
    cache, arrays = blocks_cache(manager)
    link(decoder, peer)
    src_blocks, dst_blocks = [3, 4, 5, 9], [0, 1, 2, 15]
    # Layers 1..2 of the prompt into layers 0..1 here (K and V each).
    manager.pull_blocks(BlocksCacheKey(peer.cluster_id, 0), cache, src_blocks, dst_blocks,
                        src_layer_range=range(1, 3), dst_layer_range=range(0, 2))
    source = peer_tensors(peer, "blocks", TENSORS, [BLOCKS, BLOCK_ELEMENTS], np.float16)
    expected = [np.zeros((BLOCKS, BLOCK_ELEMENTS), dtype=np.float16) for _ in range(TENSORS)]
    for layer in range(2):
        for kv in range(2):
            for s, d in zip(src_blocks, dst_blocks):
                expected[layer * 2 + kv][d] = source[(layer + 1) * 2 + kv][s]
    for t in range(TENSORS):
        assert_bytes_equal(arrays[t], expected[t], f"tensor {t}")
    # The whole cache, every layer, by keyword arguments as vllm-ascend calls it.
    manager.pull_blocks(BlocksCacheKey(cluster_id=peer.cluster_id, model_id=0), cache,
                        src_blocks=list(range(BLOCKS)), dst_blocks=list(range(BLOCKS)))
    for t in range(TENSORS):
        assert_bytes_equal(arrays[t], source[t], f"tensor {t} after the full pull")
    unlink(decoder, peer)


def test_push_blocks_with_layer_ranges(peer, decoder):
    manager = decoder.cache_manager
    cache, arrays = blocks_cache(manager, fill_seed=777)
    link(decoder, peer)
    src_blocks, dst_blocks = [0, 1, 7], [10, 11, 2]
    try:
        manager.push_blocks(BlocksCacheKey(peer.cluster_id, 1), cache, src_blocks, dst_blocks,
                            src_layer_range=range(2, 4), dst_layer_range=range(2, 4))
        remote = [np.frombuffer(b, dtype=np.float16).reshape(BLOCKS, BLOCK_ELEMENTS)
                  for b in peer.call("dump", "push_target")]
        expected = peer_tensors(peer, "push_target", TENSORS, [BLOCKS, BLOCK_ELEMENTS], np.float16)
        for tensor in range(4, 8):  # layers 2 and 3
            for s, d in zip(src_blocks, dst_blocks):
                expected[tensor][d] = arrays[tensor][s]
        for t in range(TENSORS):
            assert_bytes_equal(remote[t], expected[t], f"peer tensor {t}")
    finally:
        peer.call("reset", "push_target")
        unlink(decoder, peer)


def test_pull_and_push_cache_rows(peer, decoder):
    manager = decoder.cache_manager
    arrays = [np.zeros((ROWS, ROW_ELEMENTS), dtype=np.int32) for _ in range(4)]
    cache = manager.register_cache(CacheDesc(4, [ROWS, ROW_ELEMENTS], DataType.DT_INT32),
                                   [int(a.ctypes.data) for a in arrays])
    link(decoder, peer)
    rows_id = peer.cache_ids["rows"]
    source = peer_tensors(peer, "rows", 4, [ROWS, ROW_ELEMENTS], np.int32)
    # Row 2 of the peer's tensors 2, 3 (layer 1, one tensor per layer pair) into row 1 of tensors 0, 1.
    manager.pull_cache(CacheKeyByIdAndIndex(peer.cluster_id, rows_id, 2), cache, 1,
                       src_layer_range=range(1, 2), dst_layer_range=range(0, 1))
    expected = [np.zeros((ROWS, ROW_ELEMENTS), dtype=np.int32) for _ in range(4)]
    expected[0][1] = source[2][2]
    expected[1][1] = source[3][2]
    for t in range(4):
        assert_bytes_equal(arrays[t], expected[t], f"tensor {t}")
    # Push row 1 here into row 3 there, every layer.
    try:
        manager.push_cache(CacheKeyByIdAndIndex(peer.cluster_id, rows_id, 3), cache, src_batch_index=1)
        remote = [np.frombuffer(b, dtype=np.int32).reshape(ROWS, ROW_ELEMENTS) for b in peer.call("dump", "rows")]
        for t in range(4):
            want = source[t].copy()
            want[3] = arrays[t][1]
            assert_bytes_equal(remote[t], want, f"peer tensor {t}")
    finally:
        peer.call("reset", "rows")
        unlink(decoder, peer)


def test_pull_cache_by_cache_key_without_remote_cache_accessible(peer):
    # CANN accepts a CacheKey in pull_cache only with remote-cache-accessible off.
    datadist = LLMDataDist(LLMRole.DECODER, 3)
    datadist.init(options(remote_cache_accessible=False))
    try:
        manager = datadist.cache_manager
        arrays = [np.zeros((ROWS, ROW_ELEMENTS), dtype=np.int32) for _ in range(4)]
        cache = manager.register_cache(CacheDesc(4, [ROWS, ROW_ELEMENTS], DataType.DT_INT32), arrays)
        link(datadist, peer)
        manager.pull_cache(CacheKey(peer.cluster_id, 102), cache, batch_index=0)  # the peer's row 2
        source = peer_tensors(peer, "rows", 4, [ROWS, ROW_ELEMENTS], np.int32)
        for t in range(4):
            want = np.zeros((ROWS, ROW_ELEMENTS), dtype=np.int32)
            want[0] = source[t][2]
            assert_bytes_equal(arrays[t], want, f"tensor {t}")
        with pytest.raises(LLMException) as error:
            manager.push_cache(CacheKeyByIdAndIndex(peer.cluster_id, 1), cache)
        assert error.value.status_code == LLMStatusCode.LLM_PARAM_INVALID
        unlink(datadist, peer)
    finally:
        datadist.finalize()


def expect_status(status, call, *args, **kwargs):
    with pytest.raises(LLMException) as error:
        call(*args, **kwargs)
    assert error.value.status_code == status, str(error.value)
    return str(error.value)


def test_transfer_errors_map_to_cann_status_codes(peer, decoder):
    manager = decoder.cache_manager
    cache, arrays = blocks_cache(manager)
    key = BlocksCacheKey(peer.cluster_id, 0)
    # Not linked yet; the message carries what the C++ layer logged.
    message = expect_status(LLMStatusCode.LLM_NOT_YET_LINK, manager.pull_blocks, key, cache, [0], [0])
    assert "no link to cluster 1" in message
    link(decoder, peer)
    ret, rets = decoder.link_clusters([cluster(peer.cluster_id, peer.port)], timeout=5000)
    assert (ret, rets) == (LLMStatusCode.LLM_ALREADY_LINK, [LLMStatusCode.LLM_ALREADY_LINK])
    message = expect_status(LLMStatusCode.LLM_KV_CACHE_NOT_EXIST, manager.pull_blocks,
                            BlocksCacheKey(peer.cluster_id, 42), cache, [0], [0])
    assert "BlocksCacheKey(cluster_id=1, model_id=42)" in message
    # A cache row into blocks has no C++ V2 call (docs/PYTHON.md).
    expect_status(LLMStatusCode.LLM_FEATURE_NOT_ENABLED, manager.pull_blocks,
                  CacheKeyByIdAndIndex(peer.cluster_id, peer.cache_ids["rows"]), cache, [], [0])
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.pull_blocks, key, cache, [BLOCKS], [0])  # src range
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.pull_blocks, key, cache, [0], [BLOCKS])  # dst range
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.pull_blocks, key, cache, [0, 1], [0])   # lengths
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.pull_blocks, key, cache, [0], [0],
                  src_layer_range=range(0, LAYERS + 1), dst_layer_range=range(0, LAYERS + 1))
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.pull_blocks, key, cache, [0], [0],
                  src_layer_range=range(0, 3), dst_layer_range=range(0, 2))
    # The peer registered "hidden" with remote_accessible=False.
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.pull_blocks, BlocksCacheKey(peer.cluster_id, 9),
                  cache, [0], [0])
    rows = peer.cache_ids["rows"]
    expect_status(LLMStatusCode.LLM_KV_CACHE_NOT_EXIST, manager.push_cache,
                  CacheKeyByIdAndIndex(peer.cluster_id, 999), manager.register_cache(
                      CacheDesc(4, [ROWS, ROW_ELEMENTS], DataType.DT_INT32),
                      [np.zeros((ROWS, ROW_ELEMENTS), dtype=np.int32) for _ in range(4)]))
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.pull_cache,
                  CacheKeyByIdAndIndex(peer.cluster_id, rows, ROWS), manager.register_cache(
                      CacheDesc(4, [ROWS, ROW_ELEMENTS], DataType.DT_INT32),
                      [np.zeros((ROWS, ROW_ELEMENTS), dtype=np.int32) for _ in range(4)]))
    # Nothing of the above wrote a byte.
    for t, a in enumerate(arrays):
        assert not a.any(), f"tensor {t} was written"
    # Switching roles needs every link gone.
    expect_status(LLMStatusCode.LLM_EXIST_LINK, decoder.switch_role, LLMRole.PROMPT)
    unlink(decoder, peer)
    ret, rets = decoder.unlink_clusters([cluster(peer.cluster_id, peer.port)], timeout=5000)
    assert (ret, rets) == (LLMStatusCode.LLM_NOT_YET_LINK, [LLMStatusCode.LLM_NOT_YET_LINK])
    expect_status(LLMStatusCode.LLM_NOT_YET_LINK, manager.pull_blocks, key, cache, [0], [0])
    decoder.switch_role(LLMRole.PROMPT)


def test_forced_unlink_then_link_again(peer, decoder):
    manager = decoder.cache_manager
    cache, arrays = blocks_cache(manager)
    link(decoder, peer)
    info = cluster(peer.cluster_id, peer.port)
    ret, rets = decoder.unlink_clusters([info], timeout=5000, force=True)
    assert (ret, rets) == (LLMStatusCode.LLM_SUCCESS, [LLMStatusCode.LLM_SUCCESS])
    # The peer still holds its (now lost) side; a new link from this cluster replaces it.
    link(decoder, peer)
    manager.pull_blocks(BlocksCacheKey(peer.cluster_id), cache, [5], [5])
    source = peer_tensors(peer, "blocks", TENSORS, [BLOCKS, BLOCK_ELEMENTS], np.float16)
    assert_bytes_equal(arrays[0][5], source[0][5], "block 5")
    unlink(decoder, peer)


def test_get_metrics_counts_links_and_blocks(peer, decoder):
    manager = decoder.cache_manager
    cache, arrays = blocks_cache(manager)
    start = decoder.get_metrics()["datadist"]
    link(decoder, peer)
    manager.pull_blocks(BlocksCacheKey(peer.cluster_id, 0), cache, [3, 4, 5, 9], [0, 1, 2, 15])
    got = decoder.get_metrics()
    assert got["datadist"]["links"] == start["links"] + 1
    assert got["datadist"]["blocks_pulled"] == start["blocks_pulled"] + 4
    assert got["datadist"]["cache_pulls"] == start["cache_pulls"] + 1
    block_bytes = BLOCK_ELEMENTS * np.dtype(np.float16).itemsize
    assert sum(b["bytes"] for b in got["bytes"] if b["op"] == "read") == 4 * TENSORS * block_bytes
    unlink(decoder, peer)
    assert decoder.get_metrics()["datadist"]["links"] == start["links"]


def test_get_metrics_before_init_raises():
    with pytest.raises(RuntimeError):
        LLMDataDist(LLMRole.DECODER, 3).get_metrics()
