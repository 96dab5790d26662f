"""Argument checks with CANN's exception types.

CANN's package: a value of the wrong type raises TypeError, an integer out of
its C type's range ValueError, and other value checks LLMException with
LLM_PARAM_INVALID (status.raise_if_false).
"""

_UINT16_MAX = 2**16 - 1
_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _type_names(types):
    return " or ".join(t.__name__ for t in types)


def check_type(name, value, types, allow_none=False):
    """TypeError unless ``value`` is one of ``types`` (bool is not an int here)."""
    if value is None and allow_none:
        return
    types = types if isinstance(types, (list, tuple)) else (types,)
    if isinstance(value, bool) and bool not in types:
        raise TypeError(f"{name} should be {_type_names(types)}, got bool")
    if not isinstance(value, tuple(types)):
        raise TypeError(f"{name} should be {_type_names(types)}, got {type(value).__name__}")


def check_sequence(name, value, containers, element_types):
    """TypeError unless ``value`` is one of ``containers`` holding only ``element_types``."""
    check_type(name, value, containers)
    for i, item in enumerate(value):
        check_type(f"{name}[{i}]", item, element_types)


def _check_int_range(name, value, low, high, what):
    check_type(name, value, int)
    if not low <= value <= high:
        raise ValueError(f"{name} = {value} is out of the range of {what} [{low}, {high}]")


def check_uint16(name, value):
    _check_int_range(name, value, 0, _UINT16_MAX, "uint16")


def check_uint32(name, value):
    _check_int_range(name, value, 0, _UINT32_MAX, "uint32")


def check_uint64(name, value):
    _check_int_range(name, value, 0, _UINT64_MAX, "uint64")


def check_int32(name, value):
    _check_int_range(name, value, _INT32_MIN, _INT32_MAX, "int32")


def check_int64(name, value):
    _check_int_range(name, value, _INT64_MIN, _INT64_MAX, "int64")


def check_str_dict(name, value):
    """TypeError unless ``value`` is a dict of str to str."""
    check_type(name, value, dict)
    for key, item in value.items():
        check_type(f"{name} key", key, str)
        check_type(f"{name}[{key!r}]", item, str)
