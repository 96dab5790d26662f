"""LLMDataDist: one LLM-DataDist instance (cluster) of this process.

Backed by the C++ llm_datadist::LlmDataDist (include/llm_datadist/llm_datadist.h)
through llm_datadist._native. Where CANN's Python semantics differ from its C++
V2 API this class follows the Python ones; docs/PYTHON.md lists the mapping.
"""
import atexit
import json
import threading
from typing import Dict, List, Optional, Tuple, Union

from llm_datadist import _checks, _native
from llm_datadist.cache_manager import CacheManager
from llm_datadist.configs import LLMClusterInfo, LLMRole, ip_text
from llm_datadist.status import LLMException, LLMStatusCode, code_2_status, raise_for_status, raise_if_false

__all__ = ["LLMDataDist"]

# CANN's Python option keys that the C++ V2 API spells differently.
_LISTEN_PY, _LISTEN_CPP = "llm.listenIpInfo", "llm.ListenIpInfo"
_DEVICE_CPP = "llm.DeviceId"
_DEVICE_PY = ("ge.exec.deviceId", "ge.session_device_id")
_CACHE_MANAGER = "llm.EnableCacheManager"
_REMOTE_ACCESSIBLE = "llm.EnableRemoteCacheAccessible"
_LOCAL_COMM_RES = "llm.LocalCommRes"
_TRANSFER_BACKEND = "llm.TransferBackend"


def _native_options(options: Dict[str, str]) -> Dict[str, str]:
    """CANN's Python options as the C++ layer reads them (docs/PYTHON.md).

    Also applies CANN's init rules: llm.LocalCommRes turns the cache manager and
    remote-cache-accessible on unless given; llm.TransferBackend needs both and
    llm.listenIpInfo (LLMException LLM_PARAM_INVALID otherwise).
    """
    out = dict(options)
    if _LOCAL_COMM_RES in out:
        out.setdefault(_CACHE_MANAGER, "1")
        out.setdefault(_REMOTE_ACCESSIBLE, "1")
    if _TRANSFER_BACKEND in out:
        raise_if_false(out.get(_CACHE_MANAGER) == "1" and out.get(_REMOTE_ACCESSIBLE) == "1",
                       f"{_TRANSFER_BACKEND} needs {_CACHE_MANAGER} and {_REMOTE_ACCESSIBLE} set to 1")
        raise_if_false(_LISTEN_PY in out or _LISTEN_CPP in out, f"{_TRANSFER_BACKEND} needs {_LISTEN_PY}")
    if _LISTEN_PY in out:
        out.setdefault(_LISTEN_CPP, out.pop(_LISTEN_PY))
    if _DEVICE_CPP not in out:
        for key in _DEVICE_PY:
            if key in out:
                out[_DEVICE_CPP] = out[key]
                break
    return out


def _cluster_tuples(clusters, with_local_ips: bool):
    """LLMClusterInfo objects as the native layer takes them."""
    out = []
    for cluster in clusters:
        _checks.check_uint64("remote_cluster_id", cluster.remote_cluster_id)
        role = cluster.remote_role_type
        locals_ = [(ip_text(ip), port) for ip, port in cluster.local_ip_info_list] if with_local_ips else []
        remotes = [(ip_text(ip), port) for ip, port in cluster.remote_ip_info_list]
        out.append((cluster.remote_cluster_id, 0 if role is None else int(role), locals_, remotes))
    return out


class LLMDataDist:
    """An LLM-DataDist instance: ``LLMDataDist(role, cluster_id).init(options)``.

    One may be initialized per process at a time (CANN's rule); finalize() it
    (also done at exit) before initializing another.
    """

    _initialized_instance = None
    _instance_lock = threading.Lock()

    def __init__(self, role: LLMRole, cluster_id: int):
        _checks.check_type("role", role, LLMRole)
        _checks.check_uint64("cluster_id", cluster_id)
        self._role = role
        self._cluster_id = cluster_id
        self._native = None
        self._options: Dict[str, str] = {}
        self._cache_manager_mode = False
        self._cache_manager: Optional[CacheManager] = None
        self._atexit_registered = False

    # ------------------------------------------------------------ lifecycle

    def init(self, options: Dict[str, str]) -> None:
        """Initializes the instance; a second call on an initialized one does nothing."""
        if self._native is not None:
            return
        _checks.check_str_dict("options", options)
        native_options = _native_options(options)
        with LLMDataDist._instance_lock:
            raise_if_false(LLMDataDist._initialized_instance is None, "Cannot init multiple LLMDataDists",
                           status_code=LLMStatusCode.LLM_FAILED)
            native = _native.DataDist(self._cluster_id, int(self._role))
            code = native.initialize(native_options)
            raise_for_status(code, "[LLMDataDist.init]", _native, f"options = {options}")
            LLMDataDist._initialized_instance = self
        self._native = native
        self._options = native_options
        self._cache_manager_mode = native_options.get(_CACHE_MANAGER) == "1"
        if self._cache_manager_mode:
            self._cache_manager = CacheManager(native, native_options.get(_REMOTE_ACCESSIBLE) == "1")
        if not self._atexit_registered:
            atexit.register(self.finalize)
            self._atexit_registered = True

    def finalize(self) -> None:
        """Releases everything: links, registrations, the listener. Does nothing when not initialized.

        Calls still running on other threads finish first (each bounded by its timeout).
        """
        native = self._native
        if native is None:
            return
        native.finalize()
        if self._cache_manager is not None:
            self._cache_manager._finalized()
            self._cache_manager = None
        self._native = None
        with LLMDataDist._instance_lock:
            if LLMDataDist._initialized_instance is self:
                LLMDataDist._initialized_instance = None

    def _check_is_inited(self):
        if self._native is None:
            raise RuntimeError("llm datadist is not initialized")
        return self._native

    def get_metrics(self) -> dict:
        """The engine's metrics snapshot (docs/METRICS.md "JSON") as a dict: transfers by op,
        transport and status, bytes, descriptors, latency histograms, links, blocks pulled and pushed.

        An extension (CANN's package has none). RuntimeError when not initialized.
        """
        native = self._check_is_inited()
        code, text = native.metrics_json()
        raise_for_status(code, "get_metrics", _native)
        return json.loads(text)

    @property
    def cluster_id(self) -> int:
        return self._cluster_id

    @property
    def cache_manager(self) -> CacheManager:
        """The CacheManager (cache manager mode: llm.EnableCacheManager=1 or llm.LocalCommRes given)."""
        self._check_is_inited()
        raise_if_false(self._cache_manager_mode,
                       "cache_manager is not supported when llm.EnableCacheManager is not configured.")
        return self._cache_manager

    # ------------------------------------------------------------ links

    def _check_timeout(self, timeout):
        _checks.check_int32("timeout", timeout)
        raise_if_false(timeout > 0, "Param timeout should be greater than 0.")

    def link_clusters(self, clusters: Union[List[LLMClusterInfo], Tuple[LLMClusterInfo]], timeout=3000):
        """Links to each cluster (this side connects to its listen address).

        Returns (LLMStatusCode, [LLMStatusCode per cluster]) and does not raise
        for link failures, as in CANN.
        """
        native = self._check_is_inited()
        self._check_timeout(timeout)
        _checks.check_sequence("clusters", clusters, [list, tuple], LLMClusterInfo)
        if self._cache_manager_mode and not self._options.get(_LOCAL_COMM_RES):
            for cluster in clusters:
                raise_if_false(cluster.local_ip_info_list,
                               "local_ip_info_list is empty. Call append_local_ip_info to add local_ip_info "
                               "when local_comm_res option is unspecified or empty.")
        code, rets = native.link_clusters(_cluster_tuples(clusters, True), timeout)
        return code_2_status(code), [code_2_status(ret) for ret in rets]

    def unlink_clusters(self, clusters: Union[List[LLMClusterInfo], Tuple[LLMClusterInfo]], timeout=3000,
                        force=False):
        """Unlinks each cluster; force=True drops this side only (both sides call it).

        Returns (LLMStatusCode, [LLMStatusCode per cluster]) like link_clusters.
        """
        native = self._check_is_inited()
        self._check_timeout(timeout)
        _checks.check_sequence("clusters", clusters, [list, tuple], LLMClusterInfo)
        _checks.check_type("force", force, bool)
        code, rets = native.unlink_clusters(_cluster_tuples(clusters, False), timeout, force)
        return code_2_status(code), [code_2_status(ret) for ret in rets]

    def switch_role(self, role: LLMRole, switch_options: Optional[Dict[str, str]] = None):
        """Relabels the role and sets the listener from switch_options (llm.listenIpInfo: listen there;
        absent: stop listening). LLMException(LLM_EXIST_LINK) while links exist."""
        native = self._check_is_inited()
        _checks.check_type("role", role, LLMRole)
        if switch_options is not None:
            _checks.check_str_dict("switch_options", switch_options)
        options = {} if switch_options is None else dict(switch_options)
        if _LISTEN_PY in options:
            options.setdefault(_LISTEN_CPP, options.pop(_LISTEN_PY))
        code = native.set_role(int(role), options)
        raise_for_status(code, "[switch_role]", _native, f"role = {role}, options = {switch_options}")
        self._role = role

    # ------------------------------------------------------------ CANN calls with no counterpart here

    def _not_supported(self, call, why):
        self._check_is_inited()
        raise LLMException(f"[{call}] is not supported by this implementation: {why}",
                           status_code=LLMStatusCode.LLM_FEATURE_NOT_ENABLED)

    @property
    def kv_cache_manager(self):
        """CANN's V1 KvCacheManager: not implemented (use cache manager mode)."""
        self._not_supported("kv_cache_manager", "the V1 KvCacheManager is not implemented; set "
                                                "enable_cache_manager = True and use cache_manager")

    def check_link_status(self, remote_cluster_id: int):
        self._not_supported("check_link_status", "V1 mode only")

    def link(self, comm_name: str, cluster_rank_info: Dict[int, int], rank_table: str) -> int:
        self._not_supported("link", "HCCL communication domains are Ascend-only; use link_clusters")

    def unlink(self, comm_id: int):
        self._not_supported("unlink", "HCCL communication domains are Ascend-only; use unlink_clusters")

    def query_register_mem_status(self, comm_id: int):
        self._not_supported("query_register_mem_status", "HCCL communication domains are Ascend-only")
