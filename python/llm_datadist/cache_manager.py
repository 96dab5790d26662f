"""CacheManager: registering caches and moving them between linked clusters.

Each call checks its arguments as CANN's package does (TypeError for a wrong
type, ValueError for an integer out of range, LLMException with
LLM_PARAM_INVALID for other values), then makes one native call, which
releases the GIL, and raises LLMException for a status other than success with
the lines the C++ layer logged. Keys are looked up on the peer by the C++ layer
(llmdd_ext::FindRemoteCache) and cached per link.
"""
from typing import List, Optional, Tuple, Union

from llm_datadist import _checks, _native
from llm_datadist._buffers import address_of
from llm_datadist.llm_types import (INVALID_ID, BlocksCacheKey, Cache, CacheDesc, CacheKey, CacheKeyByIdAndIndex,
                                    Placement, check_layer_range)
from llm_datadist.status import LLMException, LLMStatusCode, raise_for_status, raise_if_false

__all__ = ["CacheManager"]

_TENSORS_PER_LAYER = 2
# The native source of a transfer: (kind, cluster_id, a, b, c), see python/src/native.cc.
_BY_ID, _BLOCKS_KEY, _REQUEST_KEY = 0, 1, 2
# KvCacheExtParam of a transfer of every layer (_ext(None, None, 2)).
_ALL_LAYERS = (-1, -1, -1, -1, _TENSORS_PER_LAYER)


def _source(key):
    if isinstance(key, CacheKeyByIdAndIndex):
        return (_BY_ID, key.cluster_id, key.cache_id & (2**64 - 1), key.batch_index, 0)
    if isinstance(key, BlocksCacheKey):
        return (_BLOCKS_KEY, key.cluster_id, key.model_id, 0, 0)
    return (_REQUEST_KEY, key.cluster_id, key.req_id, key.model_id, key.prefix_id)


def _is_valid_id(value):
    return value != INVALID_ID


def _check_request_key(key: CacheKey):
    """A CacheKey names a request or a prefix, exactly one of them."""
    raise_if_false(_is_valid_id(key.req_id) != _is_valid_id(key.prefix_id),
                   f"exactly one of req id and prefix id should be a valid id in [0, 2**64-1), "
                   f"req id:{key.req_id}, prefix id:{key.prefix_id}.")


def _check_tensor_num_per_layer(call, value, cache: Cache):
    _checks.check_uint32("tensor_num_per_layer", value)
    raise_if_false(0 < value <= 255,
                   f"[{call}] param check failed, tensor_num_per_layer ({value}) is invalid, should be in "
                   f"[1, {min(255, max(1, cache.cache_desc.num_tensors))}]")


def _ext(src_range: Optional[range], dst_range: Optional[range], tensors_per_layer: int):
    """KvCacheExtParam as the native layer takes it: inclusive layer ranges, (-1, -1) for all.

    A pull given one range only uses it for both sides (CANN's package leaves
    the other side's tensor list empty there; docs/PYTHON.md).
    """
    if src_range is None and dst_range is None:
        return (-1, -1, -1, -1, tensors_per_layer)
    src = src_range if src_range is not None else dst_range
    dst = dst_range if dst_range is not None else src_range
    return (src.start, src.stop - 1, dst.start, dst.stop - 1, tensors_per_layer)


class CacheManager:
    """Obtained from LLMDataDist.cache_manager once it is initialized in cache manager mode."""

    def __init__(self, native, remote_cache_accessible: bool):
        self._native = native
        self._initialized = True
        self._remote_cache_accessible = remote_cache_accessible
        # cache_id -> Cache: what this manager registered, kept (with the
        # buffers it holds) until unregister_cache or finalize.
        self._caches = {}

    def _check_is_inited(self):
        raise_if_false(self._initialized,
                       "CacheManager is no longer initialized; obtain a new instance after LLMDataDist.init.",
                       status_code=LLMStatusCode.LLM_ENGINE_FINALIZED)

    def _finalized(self):
        """Called by LLMDataDist.finalize: the native side has dropped every registration."""
        self._initialized = False
        self._caches.clear()

    def _check_local(self, call, cache: Cache):
        # With remote-cache-accessible on, CANN moves data only between caches
        # registered remote-accessible, the local one included (LLM_PARAM_INVALID).
        if self._remote_cache_accessible:
            raise_if_false(cache._remote_accessible,
                           f"[{call}] cache {cache.cache_id} was registered with remote_accessible=False")

    # ------------------------------------------------------------ registration

    def _register(self, call, cache_desc, addrs, keys, remote_accessible, is_blocks):
        self._check_is_inited()
        _checks.check_type("cache_desc", cache_desc, CacheDesc)
        _checks.check_type("addrs", addrs, list)
        _checks.check_type("remote_accessible", remote_accessible, bool, allow_none=True)
        raise_if_false(len(addrs) > 0, "addrs can not be empty.")
        raise_if_false(len(addrs) == cache_desc.num_tensors, "addrs length should be equal to num_tensors.")
        raise_if_false(cache_desc.batch_dim_index == 0,
                       f"[{call}] batch_dim_index {cache_desc.batch_dim_index} is not supported: rows and blocks "
                       f"are the first dimension (0) of the shape")
        raise_if_false(len(cache_desc.shape) > 0 and all(dim > 0 for dim in cache_desc.shape),
                       f"[{call}] shape {cache_desc.shape} needs at least one dimension, each > 0")
        tensor_bytes = cache_desc.size
        addresses, owners = [], []
        for i, entry in enumerate(addrs):
            address, owner = address_of(f"addrs[{i}]", entry, tensor_bytes)
            raise_if_false(address != 0, "addr can not be zero.")
            addresses.append(address)
            if owner is not None:
                owners.append(owner)
        if remote_accessible is None:
            # CANN's default: device memory is reachable by peers, host memory not.
            remote_accessible = cache_desc.placement == Placement.DEVICE
        code, cache_id = self._native.register_cache(int(cache_desc.placement), cache_desc.num_tensors,
                                                     cache_desc.data_type.value, cache_desc.shape, addresses, keys,
                                                     remote_accessible)
        raise_for_status(code, f"[{call}]", _native, f"cache_desc = {cache_desc}")
        cache = Cache(cache_id, cache_desc, addresses, is_blocks, remote_accessible, owners)
        self._caches[cache_id] = cache
        return cache

    def register_cache(self, cache_desc: CacheDesc, addrs: List[int],
                       cache_keys: Union[Tuple[CacheKey], List[CacheKey]] = (),
                       remote_accessible: Optional[bool] = None) -> Cache:
        """Registers ``cache_desc.num_tensors`` tensors at ``addrs`` as one cache.

        cache_keys[i], if given, names batch row i for peers (pull_cache with a CacheKey).
        """
        _checks.check_sequence("cache_keys", cache_keys, [list, tuple], CacheKey)
        keys = [(_REQUEST_KEY, k.cluster_id, k.model_id, k.req_id, k.prefix_id) for k in cache_keys]
        return self._register("register_cache", cache_desc, addrs, keys, remote_accessible, False)

    def register_blocks_cache(self, cache_desc: CacheDesc, addrs: List[int],
                              blocks_cache_key: Optional[BlocksCacheKey] = None,
                              remote_accessible: Optional[bool] = None) -> Cache:
        """Registers a paged cache: shape[0] blocks per tensor; peers name it by ``blocks_cache_key``."""
        _checks.check_type("blocks_cache_key", blocks_cache_key, BlocksCacheKey, allow_none=True)
        keys = [] if blocks_cache_key is None else [
            (_BLOCKS_KEY, blocks_cache_key.cluster_id, blocks_cache_key.model_id, INVALID_ID, INVALID_ID)]
        return self._register("register_blocks_cache", cache_desc, addrs, keys, remote_accessible, True)

    def unregister_cache(self, cache_id: int) -> None:
        """Unregisters a cache (after unlinking, as CANN documents); an unknown id is no error."""
        self._check_is_inited()
        _checks.check_int64("cache_id", cache_id)
        code = self._native.unregister_cache(cache_id)
        raise_for_status(code, "[unregister_cache]", _native, f"cache_id = {cache_id}")
        self._caches.pop(cache_id, None)

    # ------------------------------------------------------------ pulls

    def pull_cache(self, cache_key: Union[CacheKey, CacheKeyByIdAndIndex], cache: Cache, batch_index: int = 0,
                   size: int = -1, **kwargs) -> None:
        """Copies one batch row of the peer's cache into row ``batch_index`` of ``cache``.

        kwargs: src_layer_range, dst_layer_range (range of layers), tensor_num_per_layer (2).
        """
        self._check_is_inited()
        src_layer_range = kwargs.get("src_layer_range")
        dst_layer_range = kwargs.get("dst_layer_range")
        tensor_num_per_layer = kwargs.get("tensor_num_per_layer", _TENSORS_PER_LAYER)
        if self._remote_cache_accessible:
            _checks.check_type("cache_key", cache_key, CacheKeyByIdAndIndex)
        else:
            _checks.check_type("cache_key", cache_key, [CacheKey, CacheKeyByIdAndIndex])
        _checks.check_type("cache", cache, Cache)
        _checks.check_uint32("batch_index", batch_index)
        _checks.check_int64("size", size)
        raise_if_false(not cache.is_blocks_cache, "param check failed, cache can not be blocks cache.")
        raise_if_false(size == -1 or size > 0,
                       f"[pull_cache] param check failed, size ({size}) is invalid, should be = -1 or > 0")
        _check_tensor_num_per_layer("pull_cache", tensor_num_per_layer, cache)
        check_layer_range("src_layer_range", src_layer_range)
        check_layer_range("dst_layer_range", dst_layer_range)
        if isinstance(cache_key, CacheKey):
            _check_request_key(cache_key)
        self._check_local("pull_cache", cache)
        code = self._native.pull_cache(_source(cache_key), cache.cache_id, batch_index, size,
                                       _ext(src_layer_range, dst_layer_range, tensor_num_per_layer))
        raise_for_status(code, "[pull_cache]", _native, f"cache_key = {cache_key}")

    def pull_blocks(self, src_cache_key: Union[CacheKey, CacheKeyByIdAndIndex, BlocksCacheKey], dst_cache: Cache,
                    src_blocks: Union[Tuple[int], List[int]] = (), dst_blocks: Union[Tuple[int], List[int]] = (),
                    **kwargs) -> None:
        """Copies the peer's blocks ``src_blocks[k]`` into ``dst_blocks[k]`` of ``dst_cache``.

        kwargs: src_layer_range, dst_layer_range (range of layers), tensor_num_per_layer (2).
        """
        # The common call (a BlocksCacheKey, lists of blocks, every layer)
        # skips the general checks below, whose outcome is known here: its
        # per-call cost is what the small pulls of a serving engine pay.
        if (not kwargs and self._initialized and type(src_cache_key) is BlocksCacheKey and type(dst_cache) is Cache
                and type(src_blocks) is list and type(dst_blocks) is list and src_blocks and dst_blocks
                and dst_cache._is_blocks_cache
                and (dst_cache._remote_accessible or not self._remote_cache_accessible)):
            code = self._native.pull_blocks((_BLOCKS_KEY, src_cache_key._cluster_id, src_cache_key._model_id, 0, 0),
                                            dst_cache._cache_id, src_blocks, dst_blocks, _ALL_LAYERS)
            if code:
                raise_for_status(code, "[pull_blocks]", _native, f"src_cache_key = {src_cache_key}")
            return
        self._check_is_inited()
        src_layer_range = kwargs.get("src_layer_range")
        dst_layer_range = kwargs.get("dst_layer_range")
        tensor_num_per_layer = kwargs.get("tensor_num_per_layer", _TENSORS_PER_LAYER)
        _checks.check_type("src_cache_key", src_cache_key, [CacheKey, CacheKeyByIdAndIndex, BlocksCacheKey])
        _checks.check_type("dst_cache", dst_cache, Cache)
        # Only the containers here: the native call rejects a block that is no
        # uint64 with TypeError, without a Python loop per block.
        _checks.check_type("src_blocks", src_blocks, [list, tuple])
        _checks.check_type("dst_blocks", dst_blocks, [list, tuple])
        raise_if_false(dst_cache.is_blocks_cache, "param check failed, dst_cache should be blocks cache.")
        raise_if_false(len(dst_blocks) > 0, "dst_blocks can not be empty.")
        _check_tensor_num_per_layer("pull_blocks", tensor_num_per_layer, dst_cache)
        check_layer_range("src_layer_range", src_layer_range)
        check_layer_range("dst_layer_range", dst_layer_range)
        if isinstance(src_cache_key, BlocksCacheKey):
            raise_if_false(len(src_blocks) > 0, "src_blocks can not be empty.")
        else:
            if isinstance(src_cache_key, CacheKey):
                _check_request_key(src_cache_key)
            raise_if_false(len(src_blocks) == 0,
                           "src_blocks should be empty when src_cache_key is not instance of BlocksCacheKey.")
            # A contiguous cache row into blocks: the C++ V2 API has no such call.
            raise LLMException("[pull_blocks] from a CacheKey or CacheKeyByIdAndIndex (a cache row into blocks) "
                               "is not supported by this implementation; pull a blocks cache with a BlocksCacheKey",
                               status_code=LLMStatusCode.LLM_FEATURE_NOT_ENABLED)
        self._check_local("pull_blocks", dst_cache)
        code = self._native.pull_blocks(_source(src_cache_key), dst_cache.cache_id, src_blocks, dst_blocks,
                                        _ext(src_layer_range, dst_layer_range, tensor_num_per_layer))
        raise_for_status(code, "[pull_blocks]", _native, f"src_cache_key = {src_cache_key}")

    # ------------------------------------------------------------ pushes

    def _push_ranges(self, call, src_cache, src_layer_range, dst_layer_range, tensor_num_per_layer):
        check_layer_range("src_layer_range", src_layer_range)
        check_layer_range("dst_layer_range", dst_layer_range)
        layers = src_cache.cache_desc.num_tensors // tensor_num_per_layer
        if src_layer_range is None or dst_layer_range is None:
            raise_if_false(layers > 0, f"[{call}] tensor_num_per_layer ({tensor_num_per_layer}) is larger than "
                                       f"num_tensors ({src_cache.cache_desc.num_tensors})")
        # CANN's default: every whole layer of the source, to the same layers.
        src_layer_range = range(0, layers) if src_layer_range is None else src_layer_range
        dst_layer_range = range(0, layers) if dst_layer_range is None else dst_layer_range
        raise_if_false(len(src_layer_range) == len(dst_layer_range),
                       "src_layer_range size should be equal to size of dst_layer_range size.")
        return _ext(src_layer_range, dst_layer_range, tensor_num_per_layer)

    def push_cache(self, dst_cache_key: CacheKeyByIdAndIndex, src_cache: Cache, src_batch_index: int = 0,
                   src_layer_range: range = None, dst_layer_range: range = None, size: int = -1,
                   tensor_num_per_layer: int = _TENSORS_PER_LAYER) -> None:
        """Writes row ``src_batch_index`` of ``src_cache`` into the row ``dst_cache_key`` names on the peer."""
        self._check_is_inited()
        raise_if_false(self._remote_cache_accessible,
                       "push_cache is only supported while enable_remote_cache_accessible is True")
        _checks.check_type("dst_cache_key", dst_cache_key, CacheKeyByIdAndIndex)
        _checks.check_type("src_cache", src_cache, Cache)
        _checks.check_uint32("src_batch_index", src_batch_index)
        raise_if_false(not src_cache.is_blocks_cache, "param check failed, cache can not be blocks cache.")
        _check_tensor_num_per_layer("push_cache", tensor_num_per_layer, src_cache)
        ext = self._push_ranges("push_cache", src_cache, src_layer_range, dst_layer_range, tensor_num_per_layer)
        _checks.check_int64("size", size)
        raise_if_false(size == -1, f"[push_cache] param check failed, size ({size}) is invalid, should be = -1.")
        self._check_local("push_cache", src_cache)
        desc = src_cache.cache_desc
        code = self._native.push_cache(_source(dst_cache_key), src_cache.cache_id, int(desc.placement),
                                       desc.num_tensors, src_batch_index, size, ext)
        raise_for_status(code, "[push_cache]", _native, f"dst_cache_key = {dst_cache_key}")

    def push_blocks(self, dst_cache_key: BlocksCacheKey, src_cache: Cache,
                    src_blocks: Union[Tuple[int], List[int]] = (), dst_blocks: Union[Tuple[int], List[int]] = (),
                    src_layer_range: range = None, dst_layer_range: range = None,
                    tensor_num_per_layer: int = _TENSORS_PER_LAYER):
        """Writes blocks ``src_blocks[k]`` of ``src_cache`` into blocks ``dst_blocks[k]`` of the peer's cache."""
        self._check_is_inited()
        raise_if_false(self._remote_cache_accessible,
                       "push_blocks is only supported while enable_remote_cache_accessible is True")
        _checks.check_type("dst_cache_key", dst_cache_key, BlocksCacheKey)
        _checks.check_type("src_cache", src_cache, Cache)
        _checks.check_type("src_blocks", src_blocks, [list, tuple])
        _checks.check_type("dst_blocks", dst_blocks, [list, tuple])
        raise_if_false(src_cache.is_blocks_cache, "param check failed, cache should be blocks cache.")
        raise_if_false(len(dst_blocks) > 0, "dst_blocks can not be empty.")
        _check_tensor_num_per_layer("push_blocks", tensor_num_per_layer, src_cache)
        ext = self._push_ranges("push_blocks", src_cache, src_layer_range, dst_layer_range, tensor_num_per_layer)
        self._check_local("push_blocks", src_cache)
        desc = src_cache.cache_desc
        code = self._native.push_blocks(_source(dst_cache_key), src_cache.cache_id, int(desc.placement),
                                        desc.num_tensors, src_blocks, dst_blocks, ext)
        raise_for_status(code, "[push_blocks]", _native, f"dst_cache_key = {dst_cache_key}")

    # ------------------------------------------------------------ not here (yet)

    def _not_supported(self, call, why):
        self._check_is_inited()
        raise LLMException(f"[{call}] is not supported by this implementation: {why}",
                           status_code=LLMStatusCode.LLM_FEATURE_NOT_ENABLED)

    def allocate_cache(self, cache_desc, cache_keys=()):
        self._not_supported("allocate_cache", "it has no memory pool; allocate the memory and register_cache it")

    def allocate_blocks_cache(self, cache_desc, blocks_cache_key=None):
        self._not_supported("allocate_blocks_cache",
                            "it has no memory pool; allocate the memory and register_blocks_cache it")

    def deallocate_cache(self, cache):
        self._not_supported("deallocate_cache", "allocate_cache is not supported")

    def deallocate_blocks_cache(self, cache):
        self._not_supported("deallocate_blocks_cache", "allocate_blocks_cache is not supported")

    def copy_cache(self, dst, src, dst_batch_index=0, src_batch_index=0, offset=0, size=-1, req_id=None):
        self._not_supported("copy_cache", "local copies are not implemented yet")

    def copy_blocks(self, cache, copy_block_info):
        self._not_supported("copy_blocks", "local copies are not implemented yet")

    def swap_blocks(self, src_cache, dst_cache, src_to_dst):
        self._not_supported("swap_blocks", "local copies are not implemented yet")

    def transfer_cache_async(self, *args, **kwargs):
        self._not_supported("transfer_cache_async", "not implemented yet")

    def remove_cache_key(self, cache_key):
        self._not_supported("remove_cache_key", "not implemented yet")

    def remap_registered_memory(self, mem_infos):
        self._not_supported("remap_registered_memory", "there is no device memory to remap")
