"""Placement, CacheDesc, Cache and the three cache keys (CANN's llm_types.py names)."""
from enum import IntEnum
from typing import List, Tuple, Union

from llm_datadist import _checks
from llm_datadist.data_type import ELEMENT_BYTES, DataType
from llm_datadist.status import raise_if_false

__all__ = ["Placement", "CacheDesc", "Cache", "CacheKey", "CacheKeyByIdAndIndex", "BlocksCacheKey"]

INVALID_ID = 2**64 - 1  # CANN's "no id" for req_id and prefix_id


class Placement(IntEnum):
    HOST = 0
    DEVICE = 1

    def __str__(self):
        return f"{self.__class__.__name__}.{self.name}"


class CacheDesc:
    """What one registered cache is: ``num_tensors`` tensors of ``shape`` x ``data_type`` each.

    shape[batch_dim_index] is the number of batch rows (register_cache) or blocks
    (register_blocks_cache); this implementation needs batch_dim_index 0, as the
    C++ V2 API does (docs/PYTHON.md).
    """

    def __init__(self, num_tensors: int, shape: Union[Tuple[int], List[int]], data_type: DataType,
                 placement: Placement = Placement.DEVICE, batch_dim_index: int = 0, seq_len_dim_index: int = -1,
                 kv_tensor_format: str = None):
        _checks.check_uint32("num_tensors", num_tensors)
        _checks.check_sequence("shape", shape, [list, tuple], int)
        _checks.check_type("data_type", data_type, DataType)
        _checks.check_type("placement", placement, Placement)
        _checks.check_int32("batch_dim_index", batch_dim_index)
        _checks.check_int32("seq_len_dim_index", seq_len_dim_index)
        _checks.check_type("kv_tensor_format", kv_tensor_format, str, allow_none=True)
        self._num_tensors = num_tensors
        self._shape = list(shape)
        self._data_type = data_type
        self._placement = placement
        self._batch_dim_index = batch_dim_index
        self._seq_len_dim_index = seq_len_dim_index
        self._kv_tensor_format = kv_tensor_format

    @property
    def num_tensors(self):
        return self._num_tensors

    @property
    def shape(self):
        return self._shape

    @property
    def data_type(self):
        return self._data_type

    @property
    def placement(self):
        return self._placement

    @property
    def batch_dim(self):
        return self._batch_dim_index

    @property
    def batch_dim_index(self):
        return self._batch_dim_index

    @property
    def batch_size(self):
        """Rows (or blocks) of each tensor: shape[batch_dim_index]."""
        return self._shape[self._batch_dim_index]

    @property
    def seq_len_dim_index(self):
        return self._seq_len_dim_index

    @property
    def kv_tensor_format(self):
        return self._kv_tensor_format

    @property
    def size(self):
        """Bytes of one tensor."""
        elements = 1
        for dim in self._shape:
            elements *= dim
        return elements * ELEMENT_BYTES[self._data_type]

    def __repr__(self):
        return (f"CacheDesc(num_tensors={self._num_tensors}, shape={self._shape}, data_type={self._data_type}, "
                f"placement={self._placement}, batch_dim_index={self._batch_dim_index})")


class Cache:
    """A registered cache, as CacheManager.register_cache/register_blocks_cache return it."""

    def __init__(self, cache_id: int, cache_desc: CacheDesc, tensor_addrs: List[int], is_blocks_cache: bool = False,
                 remote_accessible: bool = True, owners=()):
        self._cache_id = cache_id
        self._cache_desc = cache_desc
        self._tensor_addrs = list(tensor_addrs)
        self._is_blocks_cache = is_blocks_cache
        self._remote_accessible = remote_accessible
        # Python objects whose memory the tensors are (numpy arrays, ...): kept
        # alive while the cache is registered, since peers may write into them.
        self._owners = tuple(owners)

    @property
    def cache_id(self):
        return self._cache_id

    @property
    def cache_desc(self):
        return self._cache_desc

    @property
    def tensor_addrs(self):
        return self._tensor_addrs

    @property
    def is_blocks_cache(self):
        return self._is_blocks_cache

    def __repr__(self):
        return f"Cache(cache_id={self._cache_id}, is_blocks_cache={self._is_blocks_cache}, {self._cache_desc})"


class CacheKey:
    """One batch row of a cache, named by its owner's cluster id and a request (or prefix) id."""

    def __init__(self, prompt_cluster_id: int = None, req_id: int = INVALID_ID, model_id: int = 0,
                 prefix_id: int = INVALID_ID, *, cluster_id: int = None):
        cluster = _either("prompt_cluster_id", prompt_cluster_id, "cluster_id", cluster_id)
        _checks.check_uint64("cluster_id", cluster)
        _checks.check_uint64("req_id", req_id)
        _checks.check_uint64("model_id", model_id)
        _checks.check_uint64("prefix_id", prefix_id)
        self._cluster_id = cluster
        self._req_id = req_id
        self._model_id = model_id
        self._prefix_id = prefix_id

    @property
    def cluster_id(self):
        return self._cluster_id

    @property
    def prompt_cluster_id(self):
        return self._cluster_id

    @property
    def req_id(self):
        return self._req_id

    @property
    def model_id(self):
        return self._model_id

    @property
    def prefix_id(self):
        return self._prefix_id

    def __repr__(self):
        return (f"CacheKey(cluster_id={self._cluster_id}, req_id={self._req_id}, model_id={self._model_id}, "
                f"prefix_id={self._prefix_id})")


class CacheKeyByIdAndIndex:
    """A cache on a peer named by its cache id there, and one of its batch rows."""

    def __init__(self, cluster_id: int, cache_id: int, batch_index: int = 0):
        _checks.check_uint64("cluster_id", cluster_id)
        _checks.check_int64("cache_id", cache_id)
        _checks.check_uint32("batch_index", batch_index)
        self._cluster_id = cluster_id
        self._cache_id = cache_id
        self._batch_index = batch_index

    @property
    def cluster_id(self):
        return self._cluster_id

    @property
    def cache_id(self):
        return self._cache_id

    @property
    def batch_index(self):
        return self._batch_index

    def __repr__(self):
        return (f"CacheKeyByIdAndIndex(cluster_id={self._cluster_id}, cache_id={self._cache_id}, "
                f"batch_index={self._batch_index})")


class BlocksCacheKey:
    """A blocks cache named by its owner's cluster id and a model id."""

    def __init__(self, prompt_cluster_id: int = None, model_id: int = 0, *, cluster_id: int = None):
        cluster = _either("prompt_cluster_id", prompt_cluster_id, "cluster_id", cluster_id)
        _checks.check_uint64("cluster_id", cluster)
        _checks.check_uint64("model_id", model_id)
        self._cluster_id = cluster
        self._model_id = model_id

    @property
    def cluster_id(self):
        return self._cluster_id

    @property
    def prompt_cluster_id(self):
        return self._cluster_id

    @property
    def model_id(self):
        return self._model_id

    def __repr__(self):
        return f"BlocksCacheKey(cluster_id={self._cluster_id}, model_id={self._model_id})"


def _either(name, value, alias, alias_value):
    """CANN's keys take the cluster id positionally or as cluster_id= / prompt_cluster_id=."""
    if value is not None and alias_value is not None:
        raise TypeError(f"give {name} or {alias}, not both")
    chosen = value if value is not None else alias_value
    if chosen is None:
        raise TypeError(f"{alias} is required")
    return chosen


def check_layer_range(name, layer_range):
    """A layer range is a Python range with step 1 and 0 <= start < stop (LLMException otherwise)."""
    _checks.check_type(name, layer_range, range, allow_none=True)
    if layer_range is None:
        return
    raise_if_false(layer_range.step == 1, f"param check failed, {name} step must be 1.")
    raise_if_false(0 <= layer_range.start < layer_range.stop,
                   f"param check failed, {name} {layer_range} must satisfy 0 <= start < stop.")
    raise_if_false(layer_range.stop - 1 <= 2**31 - 1, f"param check failed, {name} {layer_range} is too large.")
