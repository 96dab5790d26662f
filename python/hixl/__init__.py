"""CANN's ``hixl`` Python API (the HIXL transfer engine, ``hixl::Hixl``) on any Linux host.

The same names, signatures, defaults and return values as CANN's module:
every call returns a status (an int: ``hixl.SUCCESS``, ``hixl.PARAM_INVALID``,
...) or a ``(status, value)`` tuple and never raises on an engine failure.
It runs on the libllm_datadist.so of the ``llm_datadist`` package installed
with it. docs/PYTHON.md ("The hixl module") shows every call.

    import hixl
    engine = hixl.Hixl()
    assert engine.initialize("127.0.0.1:26000") == hixl.SUCCESS
    ret, handle = engine.register_mem(hixl.MemDesc(address, length), hixl.MEM_HOST)
"""
from hixl.hixl import *  # noqa: F401,F403  (CANN's package re-exports its extension so)
from hixl.hixl import (ALREADY_CONNECTED, FAILED, FEATURE_NOT_SUPPORTED, FEATURE_SUPPORTED, NOT_CONNECTED,
                       NOTIFY_FAILED, OPTION_AUTO_CONNECT, OPTION_BUFFER_POOL, OPTION_ENABLE_USE_FABRIC_MEM,
                       OPTION_GLOBAL_RESOURCE_CONFIG, OPTION_LOCAL_COMM_RES, OPTION_RDMA_SERVICE_LEVEL,
                       OPTION_RDMA_TRAFFIC_CLASS, PARAM_INVALID, RESOURCE_EXHAUSTED, SUCCESS, TIMEOUT,
                       UNSUPPORTED, AsyncConnectStatus, FeatureType, GetTransferStatusArgs, Hixl, MemDesc,
                       MemType, NotifyDesc, TransferArgs, TransferOp, TransferOpDesc, TransferResult,
                       TransferStatus, get_capability)

__all__ = [
    "ALREADY_CONNECTED", "FAILED", "FEATURE_NOT_SUPPORTED", "FEATURE_SUPPORTED", "NOT_CONNECTED", "NOTIFY_FAILED",
    "OPTION_AUTO_CONNECT", "OPTION_BUFFER_POOL", "OPTION_ENABLE_USE_FABRIC_MEM", "OPTION_GLOBAL_RESOURCE_CONFIG",
    "OPTION_LOCAL_COMM_RES", "OPTION_RDMA_SERVICE_LEVEL", "OPTION_RDMA_TRAFFIC_CLASS", "PARAM_INVALID",
    "RESOURCE_EXHAUSTED", "SUCCESS", "TIMEOUT", "UNSUPPORTED", "AsyncConnectStatus", "FeatureType",
    "GetTransferStatusArgs", "Hixl", "MemDesc", "MemType", "NotifyDesc", "TransferArgs", "TransferOp",
    "TransferOpDesc", "TransferResult", "TransferStatus", "get_capability",
    # enum values CANN exports at module level (not TransferStatus's)
    "MEM_DEVICE", "MEM_HOST", "READ", "WRITE", "AUTO_CONNECT", "CLIENT_SERVER_COMM", "NOT_CONNECT",
    "CONNECT_PENDING", "CONNECTING", "CONNECTED", "CONNECT_FAILED", "DISCONNECT_PENDING", "DISCONNECTING",
]
