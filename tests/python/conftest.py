"""Fixtures of the llm_datadist pytest suite (run by scripts/test.sh, docs/PYTHON.md).

The package under test is the installed one (pip install . into a venv). One
LLMDataDist may be initialized per process (CANN's rule), so every test that
needs a peer talks to a second process (_peer.py) started once per module.
"""
import multiprocessing
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import _peer  # noqa: E402
from llm_datadist import LLMClusterInfo, LLMConfig, LLMDataDist, LLMRole  # noqa: E402

PEER_TIMEOUT_S = 60


class Peer:
    """The prompt process: its port, its cache ids, and commands to it."""

    def __init__(self):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(target=_peer.serve, args=(child,), daemon=True)
        self.process.start()
        reply = self._recv()
        if reply[0] != "ready":
            raise RuntimeError(f"peer failed to start:\n{reply[1]}")
        _, self.port, self.cache_ids = reply
        self.cluster_id = _peer.PROMPT_CLUSTER

    def _recv(self):
        if not self._conn.poll(PEER_TIMEOUT_S):
            raise TimeoutError("the peer process did not answer")
        reply = self._conn.recv()
        if isinstance(reply, tuple) and reply and reply[0] == "error":
            raise RuntimeError(f"peer error:\n{reply[1]}")
        return reply

    def call(self, *command):
        self._conn.send(command)
        return self._recv()

    def close(self):
        try:
            self.call("exit")
        finally:
            self.process.join(PEER_TIMEOUT_S)
            if self.process.is_alive():
                self.process.kill()


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
