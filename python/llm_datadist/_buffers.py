"""Tensor addresses as Python users hold them.

CANN's register_cache takes a list of int addresses (what tensor.data_ptr()
gives). This package also takes, in that list, the buffers themselves: numpy
arrays and anything with the buffer protocol (bytearray, memoryview, mmap),
objects with ``__array_interface__``, torch-like tensors (``data_ptr()``,
``numel()``, ``element_size()``, ``is_contiguous()``), and CPU tensors of any
library through DLPack (``__dlpack__``, read without a copy). For those the address is
read from the object, its length is checked against the tensor size the
CacheDesc gives, and the object is kept alive while the cache is registered.
A plain int is trusted as CANN trusts it.
"""
from llm_datadist import _native
from llm_datadist.status import LLMException, LLMStatusCode


def _invalid(message):
    return LLMException(message, status_code=LLMStatusCode.LLM_PARAM_INVALID)


def _array_interface(name, obj):
    interface = obj.__array_interface__
    address, readonly = interface["data"]
    strides = interface.get("strides")
    itemsize = int(interface["typestr"][2:])
    nbytes = itemsize
    for dim in interface["shape"]:
        nbytes *= dim
    if strides is not None:
        # Contiguous C order only: each stride is the product of the later dims.
        expected = itemsize
        for dim, stride in zip(reversed(interface["shape"]), reversed(strides)):
            if dim > 1 and stride != expected:
                raise _invalid(f"{name} is not C-contiguous (strides {strides})")
            expected *= dim
    return address, nbytes, bool(readonly)


def _tensor(name, obj):
    if not obj.is_contiguous():
        raise _invalid(f"{name} is not contiguous")
    return obj.data_ptr(), obj.numel() * obj.element_size(), False


def address_of(name, obj, tensor_bytes):
    """(address, owner) of one entry of ``addrs``; owner is the object to keep alive (None for an int).

    Raises TypeError for an object that is no address and no buffer, and
    LLMException(LLM_PARAM_INVALID) for a buffer that is read-only, not
    contiguous or shorter than ``tensor_bytes``.
    """
    if isinstance(obj, int) and not isinstance(obj, bool):
        return obj, None
    if hasattr(obj, "__array_interface__"):
        address, nbytes, readonly = _array_interface(name, obj)
    elif hasattr(obj, "data_ptr") and hasattr(obj, "element_size"):
        address, nbytes, readonly = _tensor(name, obj)
    elif hasattr(obj, "__dlpack__"):
        try:
            address, nbytes = _native.dlpack_info(obj)
        except TypeError:
            raise _invalid(f"{name}: its DLPack tensor is not a writable, C-contiguous CPU tensor") from None
        readonly = False
    else:
        try:
            address, nbytes, readonly = _native.buffer_info(obj)
        except ValueError as error:
            raise _invalid(f"{name}: {error}") from None
        except TypeError:
            raise TypeError(f"{name} should be an int address or a buffer (numpy array, tensor, bytearray), "
                            f"got {type(obj).__name__}") from None
    if readonly:
        raise _invalid(f"{name} is read-only: peers and pulls write into a registered cache")
    if nbytes < tensor_bytes:
        raise _invalid(f"{name} holds {nbytes} bytes, but each tensor of the cache is {tensor_bytes} bytes")
    return address, obj
