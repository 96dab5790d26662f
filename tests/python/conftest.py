"""Fixtures of the llm_datadist pytest suite (run by scripts/test.sh, docs/PYTHON.md).

The package under test is the installed one (pip install . into a venv). One
LLMDataDist may be initialized per process (CANN's rule), so every test that
needs a peer talks to a second process (_peer.py) started once per module.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import _peer  # noqa: E402
from _peer_process import PeerProcess  # noqa: E402
from llm_datadist import LLMClusterInfo, LLMConfig, LLMDataDist, LLMRole  # noqa: E402


class Peer(PeerProcess):
    """The prompt process: its port, its cache ids, and commands to it."""

    def __init__(self):
        super().__init__(_peer.serve, "peer")
        if self.first[0] != "ready":
            raise RuntimeError(f"peer failed to start:\n{self.first[1]}")
        _, self.port, self.cache_ids = self.first
        self.cluster_id = _peer.PROMPT_CLUSTER


@pytest.fixture(scope="module")
def peer():
    p = Peer()
    yield p
    p.close()


def options(listen_port=None, remote_cache_accessible=True, sync_kv_timeout=5000):
    config = LLMConfig()
    config.device_id = 0
    config.enable_cache_manager = True
    config.enable_remote_cache_accessible = remote_cache_accessible
    config.sync_kv_timeout = sync_kv_timeout
    if listen_port is not None:
        config.listen_ip_info = f"127.0.0.1:{listen_port}"
    return config.generate_options()


def cluster(remote_cluster_id, port, ip="127.0.0.1"):
    info = LLMClusterInfo()
    info.remote_cluster_id = remote_cluster_id
    info.append_local_ip_info(ip, 0)
    info.append_remote_ip_info(ip, port)
    return info


@pytest.fixture
def decoder():
    """An initialized decoder (cluster 2) in this process; finalized afterwards."""
    datadist = LLMDataDist(LLMRole.DECODER, 2)
    datadist.init(options())
    yield datadist
    datadist.finalize()
