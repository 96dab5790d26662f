"""The calls that need no peer: construction, options, registration checks, and
the status code (or exception type) of each error path, as CANN's package has them."""
import numpy as np
import pytest

from conftest import cluster, options
from llm_datadist import (BlocksCacheKey, Cache, CacheDesc, CacheKey, CacheKeyByIdAndIndex, DataType,
                          LLMClusterInfo, LLMConfig, LLMDataDist, LLMException, LLMRole, LLMStatusCode, LlmConfig,
                          Placement)


def expect_status(status, call, *args, **kwargs):
    with pytest.raises(LLMException) as error:
        call(*args, **kwargs)
    assert error.value.status_code == status, str(error.value)
    return str(error.value)


def test_enums_and_status_values():
    assert (LLMRole.PROMPT, LLMRole.DECODER, LLMRole.MIX) == (1, 2, 3)
    assert (Placement.HOST, Placement.DEVICE) == (0, 1)
    assert DataType.DT_FLOAT16.value == 1 and DataType.DT_BF16.value == 27
    assert LLMStatusCode.LLM_PARAM_INVALID == 0x5010B005
    assert LLMStatusCode.LLM_UNKNOWN_ERROR == -1
    assert LlmConfig is LLMConfig
    error = LLMException("why", status_code=LLMStatusCode.LLM_TIMEOUT)
    assert isinstance(error, RuntimeError) and error.status_code == LLMStatusCode.LLM_TIMEOUT


def test_config_generates_cann_option_keys():
    config = LLMConfig()
    config.device_id = 3
    config.sync_kv_timeout = 1200
    config.listen_ip_info = "127.0.0.1:26000"
    config.enable_cache_manager = True
    config.enable_remote_cache_accessible = True
    config.ge_options = {"ge.custom": "x"}
    assert config.generate_options() == {
        "ge.custom": "x", "ge.exec.deviceId": "3", "ge.session_device_id": "3", "llm.SyncKvCacheWaitTime": "1200",
        "llm.EnableCacheManager": "1", "llm.EnableRemoteCacheAccessible": "1", "llm.listenIpInfo": "127.0.0.1:26000",
        "llm.MemoryUtilization": "0.95"}
    config.device_id = [0, 1]
    assert config.generate_options()["ge.exec.deviceId"] == "0;1"
    with pytest.raises(TypeError):
        config.device_id = "0"
    with pytest.raises(LLMException):
        config.device_id = -1
    with pytest.raises(LLMException):
        config.sync_kv_timeout = "1s"
    with pytest.raises(TypeError):
        config.enable_cache_manager = 1


def test_cluster_info_stores_ipv4_as_cann_does():
    info = LLMClusterInfo()
    info.remote_cluster_id = 7
    info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info("10.0.0.2", 26000)
    assert info.local_ip_info_list == [(0x0100007F, 0)]  # inet_aton, little-endian
    assert info.remote_ip_info_list == [(0x0200000A, 26000)]
    with pytest.raises(ValueError):
        info.append_remote_ip_info("10.0.0.2", 70000)
    with pytest.raises(ValueError):
        info.remote_cluster_id = -1
    with pytest.raises(RuntimeError):
        info.append_remote_ip_info("not an ip", 1)


def test_keys_and_descs():
    assert BlocksCacheKey(1, 2).cluster_id == 1 and BlocksCacheKey(cluster_id=1, model_id=2).model_id == 2
    assert BlocksCacheKey(prompt_cluster_id=4).prompt_cluster_id == 4
    key = CacheKey(0, 1, 0)
    assert (key.cluster_id, key.req_id, key.model_id, key.prefix_id) == (0, 1, 0, 2**64 - 1)
    assert CacheKeyByIdAndIndex(1, 5).batch_index == 0
    desc = CacheDesc(80, [4, 2048, 1, 128], DataType.DT_FLOAT16)
    assert (desc.placement, desc.batch_size, desc.size) == (Placement.DEVICE, 4, 4 * 2048 * 128 * 2)
    with pytest.raises(TypeError):
        CacheDesc(2, [4, 4], "DT_FLOAT16")
    with pytest.raises(ValueError):
        CacheDesc(-1, [4], DataType.DT_INT8)
    with pytest.raises(TypeError):
        BlocksCacheKey()


def test_lifecycle_errors():
    with pytest.raises(TypeError):
        LLMDataDist(1, 0)  # role must be an LLMRole
    with pytest.raises(ValueError):
        LLMDataDist(LLMRole.PROMPT, -1)
    datadist = LLMDataDist(LLMRole.PROMPT, 10)
    with pytest.raises(RuntimeError):
        datadist.cache_manager
    with pytest.raises(RuntimeError):
        datadist.link_clusters([])
    # The C++ layer's reason is in the message.
    message = expect_status(LLMStatusCode.LLM_PARAM_INVALID, datadist.init, {"llm.EnableCacheManager": "1"})
    assert "llm.DeviceId" in message
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, datadist.init,
                  {"ge.exec.deviceId": "0", "llm.listenIpInfo": "127.0.0.1"})
    with pytest.raises(TypeError):
        datadist.init({"ge.exec.deviceId": 0})
    datadist.init(options())
    datadist.init(options())  # a second init does nothing
    other = LLMDataDist(LLMRole.DECODER, 11)
    expect_status(LLMStatusCode.LLM_FAILED, other.init, options())
    manager = datadist.cache_manager
    datadist.finalize()
    datadist.finalize()
    expect_status(LLMStatusCode.LLM_ENGINE_FINALIZED, manager.unregister_cache, 1)
    other.init(options())  # one at a time: fine once the first is finalized
    other.finalize()


def test_cache_manager_needs_cache_manager_mode():
    datadist = LLMDataDist(LLMRole.PROMPT, 12)
    datadist.init({"ge.exec.deviceId": "0"})
    try:
        expect_status(LLMStatusCode.LLM_PARAM_INVALID, lambda: datadist.cache_manager)
        expect_status(LLMStatusCode.LLM_FEATURE_NOT_ENABLED, lambda: datadist.kv_cache_manager)
    finally:
        datadist.finalize()
    datadist = LLMDataDist(LLMRole.PROMPT, 12)
    datadist.init({"ge.exec.deviceId": "0", "llm.LocalCommRes": ""})  # turns the cache manager on
    try:
        assert datadist.cache_manager is not None
    finally:
        datadist.finalize()
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, LLMDataDist(LLMRole.PROMPT, 12).init,
                  {"ge.exec.deviceId": "0", "llm.TransferBackend": "hixl"})


def test_register_checks(decoder):
    manager = decoder.cache_manager
    desc = CacheDesc(2, [4, 8], DataType.DT_INT32)
    arrays = [np.zeros((4, 8), dtype=np.int32) for _ in range(2)]
    with pytest.raises(TypeError):
        manager.register_cache(desc, tuple(a.ctypes.data for a in arrays))  # a list, as in CANN
    with pytest.raises(TypeError):
        manager.register_cache(desc, ["0x1000", "0x2000"])
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.register_cache, desc, [])
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.register_cache, desc, [arrays[0].ctypes.data])
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.register_cache, desc, [arrays[0].ctypes.data, 0])
    short = np.zeros((3, 8), dtype=np.int32)
    message = expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.register_cache, desc, [arrays[0], short])
    assert "96 bytes" in message and "128 bytes" in message
    read_only = np.zeros((4, 8), dtype=np.int32)
    read_only.flags.writeable = False
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.register_cache, desc, [arrays[0], read_only])
    strided = np.zeros((4, 16), dtype=np.int32)[:, ::2]
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.register_cache, desc, [arrays[0], strided])
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.register_cache,
                  CacheDesc(2, [4, 8], DataType.DT_INT32, batch_dim_index=1), arrays)
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.register_cache,
                  CacheDesc(2, [4, 0], DataType.DT_INT32), arrays)
    # Buffers of every kind; the cache keeps them alive.
    cache = manager.register_blocks_cache(desc, [bytearray(128), arrays[1]], BlocksCacheKey(2, 0))
    assert isinstance(cache, Cache) and cache.is_blocks_cache and cache.cache_id > 0
    assert cache.tensor_addrs[1] == arrays[1].ctypes.data
    rows = manager.register_cache(desc, [int(a.ctypes.data) for a in arrays], [CacheKey(2, 5), CacheKey(2, 6)])
    assert not rows.is_blocks_cache and rows.cache_id == cache.cache_id + 1
    # More keys than rows.
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.register_cache, desc, arrays,
                  [CacheKey(2, r) for r in range(5)])
    manager.unregister_cache(rows.cache_id)
    manager.unregister_cache(rows.cache_id)  # unknown ids are fine
    with pytest.raises(ValueError):
        manager.unregister_cache(2**63)


def test_transfer_argument_checks(decoder):
    manager = decoder.cache_manager
    desc = CacheDesc(2, [4, 8], DataType.DT_INT32)
    arrays = [np.zeros((4, 8), dtype=np.int32) for _ in range(2)]
    blocks = manager.register_blocks_cache(desc, arrays)
    rows = manager.register_cache(desc, [np.zeros((4, 8), dtype=np.int32) for _ in range(2)])
    key = BlocksCacheKey(1, 0)
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.pull_blocks, key, rows, [0], [0])  # not blocks
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.pull_blocks, key, blocks, [0], [])
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.pull_blocks, key, blocks, [], [0])
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.pull_blocks, key, blocks, [0], [0],
                  src_layer_range=range(0, 4, 2))
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.pull_blocks, key, blocks, [0], [0],
                  tensor_num_per_layer=0)
    with pytest.raises(TypeError):
        manager.pull_blocks(key, blocks, [-1], [0])
    with pytest.raises(TypeError):
        manager.pull_blocks("key", blocks, [0], [0])
    with pytest.raises(TypeError):
        manager.pull_blocks(key, blocks, {0}, [0])
    # No link to cluster 1: the C++ layer's status and reason.
    message = expect_status(LLMStatusCode.LLM_NOT_YET_LINK, manager.pull_blocks, key, blocks, [0], [0])
    assert "cluster 1" in message
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.pull_blocks, BlocksCacheKey(2, 0), blocks, [0], [0])
    with pytest.raises(TypeError):  # remote-cache-accessible on: only CacheKeyByIdAndIndex
        manager.pull_cache(CacheKey(1, 1), rows)
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.pull_cache, CacheKeyByIdAndIndex(1, 1), rows, size=0)
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.pull_cache, CacheKeyByIdAndIndex(1, 1), blocks)
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.push_cache, CacheKeyByIdAndIndex(1, 1), rows, size=8)
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.push_blocks, key, blocks, [0], [0],
                  src_layer_range=range(0, 1), dst_layer_range=range(0, 2))
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.push_blocks, key, rows, [0], [0])
    with pytest.raises(TypeError):
        manager.push_blocks(CacheKeyByIdAndIndex(1, 1), blocks, [0], [0])
    expect_status(LLMStatusCode.LLM_FEATURE_NOT_ENABLED, manager.allocate_cache, desc)
    # Host caches are not reachable by default (CANN), and with remote-cache-accessible
    # on they take no part in transfers.
    host = manager.register_blocks_cache(CacheDesc(2, [4, 8], DataType.DT_INT32, Placement.HOST),
                                         [np.zeros((4, 8), dtype=np.int32) for _ in range(2)])
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.pull_blocks, key, host, [0], [0])
    assert not any(a.any() for a in arrays)


def test_link_failures_are_returned_not_raised(decoder):
    ret, rets = decoder.link_clusters([cluster(1, _unused_port())], timeout=1000)
    assert (ret, rets) == (LLMStatusCode.LLM_LINK_FAILED, [LLMStatusCode.LLM_LINK_FAILED])
    ret, rets = decoder.unlink_clusters([cluster(1, 1)], timeout=1000, force=True)
    assert (ret, rets) == (LLMStatusCode.LLM_SUCCESS, [LLMStatusCode.LLM_SUCCESS])
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, decoder.link_clusters, [cluster(1, 1)], timeout=0)
    with pytest.raises(TypeError):
        decoder.link_clusters(cluster(1, 1))
    with pytest.raises(TypeError):
        decoder.unlink_clusters([cluster(1, 1)], force=1)
    no_local = LLMClusterInfo()
    no_local.remote_cluster_id = 1
    no_local.append_remote_ip_info("127.0.0.1", 1)
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, decoder.link_clusters, [no_local])
    no_id = LLMClusterInfo()
    no_id.append_local_ip_info("127.0.0.1", 0)
    with pytest.raises(TypeError):  # remote_cluster_id never set
        decoder.link_clusters([no_id])


def _unused_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DLPackOnly:
    """A tensor that offers nothing but DLPack (as jax or tensorflow CPU arrays do)."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


def test_dlpack_buffers(decoder):
    manager = decoder.cache_manager
    desc = CacheDesc(2, [4, 8], DataType.DT_INT32)
    arrays = [np.zeros((4, 8), dtype=np.int32) for _ in range(2)]
    cache = manager.register_blocks_cache(desc, [DLPackOnly(a) for a in arrays], BlocksCacheKey(2, 0))
    assert cache.tensor_addrs == [a.ctypes.data for a in arrays]  # the tensors themselves, no copy
    short = DLPackOnly(np.zeros((3, 8), dtype=np.int32))
    message = expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.register_blocks_cache, desc,
                            [DLPackOnly(arrays[0]), short], BlocksCacheKey(2, 1))
    assert "96 bytes" in message and "128 bytes" in message
    strided = DLPackOnly(np.zeros((4, 16), dtype=np.int32)[:, ::2])
    message = expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.register_blocks_cache, desc,
                            [DLPackOnly(arrays[0]), strided], BlocksCacheKey(2, 1))
    assert "C-contiguous CPU tensor" in message
    read_only = np.zeros((4, 8), dtype=np.int32)
    read_only.flags.writeable = False
    expect_status(LLMStatusCode.LLM_PARAM_INVALID, manager.register_blocks_cache, desc,
                  [DLPackOnly(arrays[0]), DLPackOnly(read_only)], BlocksCacheKey(2, 1))
    manager.unregister_cache(cache.cache_id)


def test_the_names_docs_python_md_lists_as_not_implemented(decoder):
    """docs/PYTHON.md "What is not implemented": each listed call raises LLM_FEATURE_NOT_ENABLED, each
    listed name is absent."""
    import llm_datadist
    manager = decoder.cache_manager
    desc = CacheDesc(2, [4, 8], DataType.DT_INT32)
    for call, args in [("allocate_cache", (desc,)), ("allocate_blocks_cache", (desc,)),
                       ("deallocate_cache", (None,)), ("deallocate_blocks_cache", (None,)),
                       ("copy_cache", (None, None)), ("copy_blocks", (None, {})), ("swap_blocks", (None, None, {})),
                       ("transfer_cache_async", ()), ("remove_cache_key", (None,)),
                       ("remap_registered_memory", ([],))]:
        expect_status(LLMStatusCode.LLM_FEATURE_NOT_ENABLED, getattr(manager, call), *args)
    expect_status(LLMStatusCode.LLM_FEATURE_NOT_ENABLED, lambda: decoder.kv_cache_manager)
    for call, args in [("check_link_status", (1,)), ("link", ("comm", {}, "")), ("unlink", (1,)),
                       ("query_register_mem_status", (1,))]:
        expect_status(LLMStatusCode.LLM_FEATURE_NOT_ENABLED, getattr(decoder, call), *args)
    assert not hasattr(Cache, "create_cpu_cache")
    for name in ["Status", "KvCache", "RegisterMemStatus", "LayerSynchronizer", "TransferConfig", "CacheTask",
                 "TransferWithCacheKeyConfig", "Memtype", "MemInfo", "TensorDesc", "Tensor", "KvCacheManager"]:
        assert not hasattr(llm_datadist, name), name
