"""LLMRole, LLMClusterInfo and LLMConfig (CANN's configs.py names and options).

LLMConfig.generate_options() writes CANN's option keys (``llm.listenIpInfo``,
``ge.exec.deviceId``, ...); LLMDataDist.init turns them into the C++ keys
(docs/PYTHON.md, "From CANN's options to the C++ ones").
"""
import ipaddress
import socket
from enum import IntEnum
from typing import List, Tuple, Union

from llm_datadist import _checks
from llm_datadist.status import raise_if_false

__all__ = ["LLMRole", "LLMClusterInfo", "LLMConfig", "LlmConfig"]

_UINT32_MAX = 2**32 - 1


class LLMRole(IntEnum):
    PROMPT = 1
    DECODER = 2
    MIX = 3

    def __str__(self):
        return f"{self.__class__.__name__}.{self.name}"


def _ip_value(ip):
    """CANN keeps an IPv4 address as the int inet_aton gives, read little-endian;
    an IPv6 address (beyond CANN) stays text."""
    if isinstance(ip, int):
        return ip
    try:
        return int.from_bytes(socket.inet_aton(ip), byteorder="little")
    except OSError:
        pass
    try:
        return str(ipaddress.IPv6Address(ip.strip("[]")))
    except ValueError:
        raise RuntimeError(f"Can not parse ip str:{ip}") from None


def ip_text(value) -> str:
    """The text form of an address as LLMClusterInfo stores it."""
    if isinstance(value, str):
        return value
    return socket.inet_ntoa(int(value).to_bytes(4, byteorder="little"))


class LLMClusterInfo:
    """A remote cluster to link to (or unlink from)."""

    def __init__(self):
        self._remote_cluster_id = None
        self._remote_role_type = None
        self._local_ip_info_list: List[Tuple[Union[int, str], int]] = []
        self._remote_ip_info_list: List[Tuple[Union[int, str], int]] = []

    @property
    def remote_cluster_id(self):
        return self._remote_cluster_id

    @remote_cluster_id.setter
    def remote_cluster_id(self, remote_cluster_id):
        _checks.check_uint64("remote_cluster_id", remote_cluster_id)
        self._remote_cluster_id = remote_cluster_id

    @property
    def remote_role_type(self):
        return self._remote_role_type

    @remote_role_type.setter
    def remote_role_type(self, remote_role_type):
        _checks.check_type("remote_role_type", remote_role_type, [LLMRole, int])
        self._remote_role_type = remote_role_type

    @property
    def local_ip_info_list(self):
        return self._local_ip_info_list

    @property
    def remote_ip_info_list(self):
        return self._remote_ip_info_list

    @staticmethod
    def _ip_info(ip, port):
        _checks.check_type("ip", ip, [str, int])
        _checks.check_uint16("port", port)
        return _ip_value(ip), port

    def append_local_ip_info(self, ip: Union[str, int], port: int):
        """This host's address for the link (its port is not used)."""
        self._local_ip_info_list.append(self._ip_info(ip, port))

    def append_remote_ip_info(self, ip: Union[str, int], port: int):
        """The remote cluster's listen address (llm.listenIpInfo there)."""
        self._remote_ip_info_list.append(self._ip_info(ip, port))


class LLMConfig:
    """Builds the options dict of LLMDataDist.init; unset properties write nothing."""

    def __init__(self):
        self._device_id = None
        self._sync_kv_timeout = None
        self._listen_ip_info = ""
        self._ge_options = {}
        self._enable_switch_role = False
        self._enable_cache_manager = None
        self._enable_remote_cache_accessible = None
        self._local_comm_res = None
        self._transfer_backend = None
        self._link_total_time = None
        self._link_retry_count = None
        self._mem_pool_cfg = ""
        self._host_mem_pool_cfg = ""
        self._buf_pool_cfg = ""
        self._rdma_traffic_class = None
        self._rdma_service_level = None
        self._global_resource_config = None
        self._mem_utilization = 0.95

    def generate_options(self):
        """The options as a dict of str to str (CANN's keys)."""
        options = dict(self._ge_options)
        if self._device_id is not None:
            if isinstance(self._device_id, int):
                options["ge.exec.deviceId"] = str(self._device_id)
                options["ge.session_device_id"] = str(self._device_id)
            else:
                options["ge.exec.deviceId"] = ";".join(str(dev) for dev in self._device_id)
                options["ge.session_device_id"] = str(self._device_id[0])
        if self._sync_kv_timeout is not None:
            options["llm.SyncKvCacheWaitTime"] = str(self._sync_kv_timeout)
        if self._buf_pool_cfg:
            options["llm.BufPoolCfg"] = self._buf_pool_cfg
        if self._mem_pool_cfg:
            options["llm.MemPoolConfig"] = self._mem_pool_cfg
        if self._host_mem_pool_cfg:
            options["llm.HostMemPoolConfig"] = self._host_mem_pool_cfg
        if self._enable_cache_manager is not None:
            options["llm.EnableCacheManager"] = "1" if self._enable_cache_manager else "0"
        if self._enable_remote_cache_accessible is not None:
            options["llm.EnableRemoteCacheAccessible"] = "1" if self._enable_remote_cache_accessible else "0"
        if self._listen_ip_info:
            options["llm.listenIpInfo"] = self._listen_ip_info
        if self._link_total_time is not None:
            options["llm.LinkTotalTime"] = str(self._link_total_time)
        if self._link_retry_count is not None:
            options["llm.LinkRetryCount"] = str(self._link_retry_count)
        if self._rdma_traffic_class is not None:
            options["llm.RdmaTrafficClass"] = str(self._rdma_traffic_class)
        if self._rdma_service_level is not None:
            options["llm.RdmaServiceLevel"] = str(self._rdma_service_level)
        if self._local_comm_res is not None:
            options["llm.LocalCommRes"] = self._local_comm_res
        if self._transfer_backend is not None:
            options["llm.TransferBackend"] = self._transfer_backend
        if self._global_resource_config is not None:
            options["llm.GlobalResourceConfig"] = self._global_resource_config
        if self._enable_switch_role:
            options["llm.EnableSwitchRole"] = "1"
        options["llm.MemoryUtilization"] = str(self._mem_utilization)
        return options

    @property
    def device_id(self):
        return self._device_id

    @device_id.setter
    def device_id(self, device_id):
        _checks.check_type("device_id", device_id, [int, list, tuple])
        ids = [device_id] if isinstance(device_id, int) else device_id
        for dev in ids:
            _checks.check_int32("device_id", dev)
            raise_if_false(dev >= 0, "device_id should be greater than or equal to zero.")
        self._device_id = device_id

    @property
    def sync_kv_timeout(self):
        return self._sync_kv_timeout

    @sync_kv_timeout.setter
    def sync_kv_timeout(self, sync_kv_timeout):
        _checks.check_type("sync_kv_timeout", sync_kv_timeout, [int, str])
        if isinstance(sync_kv_timeout, str):
            raise_if_false(sync_kv_timeout.isdigit(), "sync_kv_timeout must be digit.")
        raise_if_false(int(sync_kv_timeout) > 0, "sync_kv_timeout should be greater than zero.")
        _checks.check_int32("sync_kv_timeout", int(sync_kv_timeout))
        self._sync_kv_timeout = sync_kv_timeout

    @property
    def listen_ip_info(self):
        return self._listen_ip_info

    @listen_ip_info.setter
    def listen_ip_info(self, listen_ip_info):
        _checks.check_type("listen_ip_info", listen_ip_info, str)
        self._listen_ip_info = listen_ip_info

    @property
    def ge_options(self):
        return self._ge_options

    @ge_options.setter
    def ge_options(self, ge_options):
        _checks.check_str_dict("ge_options", ge_options)
        self._ge_options = ge_options

    def _bool_property(name):  # noqa: N805 - a property factory used in the class body
        attr = "_" + name

        def getter(self):
            value = getattr(self, attr)
            return False if value is None else value

        def setter(self, value):
            _checks.check_type(name, value, bool)
            setattr(self, attr, value)

        return property(getter, setter)

    enable_switch_role = _bool_property("enable_switch_role")
    enable_cache_manager = _bool_property("enable_cache_manager")
    enable_remote_cache_accessible = _bool_property("enable_remote_cache_accessible")

    def _str_property(name, unset=""):  # noqa: N805
        attr = "_" + name

        def getter(self):
            value = getattr(self, attr)
            return unset if value is None else value

        def setter(self, value):
            _checks.check_type(name, value, str)
            setattr(self, attr, value)

        return property(getter, setter)

    local_comm_res = _str_property("local_comm_res")
    transfer_backend = _str_property("transfer_backend")
    global_resource_config = _str_property("global_resource_config")
    mem_pool_cfg = _str_property("mem_pool_cfg")
    host_mem_pool_cfg = _str_property("host_mem_pool_cfg")
    buf_pool_cfg = _str_property("buf_pool_cfg")
    del _bool_property, _str_property

    @property
    def link_total_time(self):
        return 0 if self._link_total_time is None else self._link_total_time

    @link_total_time.setter
    def link_total_time(self, link_total_time):
        _checks.check_type("link_total_time", link_total_time, int)
        raise_if_false(0 <= link_total_time <= _UINT32_MAX,
                       f"link_total_time should be an integer between [0, 2^32-1], given value is {link_total_time}")
        self._link_total_time = link_total_time

    @property
    def link_retry_count(self):
        return 1 if self._link_retry_count is None else self._link_retry_count

    @link_retry_count.setter
    def link_retry_count(self, link_retry_count):
        _checks.check_type("link_retry_count", link_retry_count, int)
        raise_if_false(1 <= link_retry_count <= 100,
                       f"link_retry_count should be an integer between [1, 100], given value is {link_retry_count}")
        self._link_retry_count = link_retry_count

    @property
    def rdma_traffic_class(self):
        return self._rdma_traffic_class

    @rdma_traffic_class.setter
    def rdma_traffic_class(self, value):
        _checks.check_uint32("rdma_traffic_class", value)
        self._rdma_traffic_class = value

    @property
    def rdma_service_level(self):
        return self._rdma_service_level

    @rdma_service_level.setter
    def rdma_service_level(self, value):
        _checks.check_uint32("rdma_service_level", value)
        self._rdma_service_level = value

    @property
    def mem_utilization(self):
        return self._mem_utilization

    @mem_utilization.setter
    def mem_utilization(self, value):
        _checks.check_type("mem_utilization", value, float)
        raise_if_false(0.0 <= value <= 1.0, f"mem_utilization must be in range [0,1], current:{value}")
        self._mem_utilization = value


LlmConfig = LLMConfig
