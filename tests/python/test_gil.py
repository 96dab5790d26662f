"""Blocking calls release the GIL: a Python thread keeps running while another
waits in the library, and a finalize racing a transfer does not crash."""
import socket
import threading
import time

import numpy as np

from conftest import cluster
from llm_datadist import BlocksCacheKey, CacheDesc, DataType, LLMException, LLMStatusCode

LINK_TIMEOUT_MS = 1500


class Counter(threading.Thread):
    """Counts as fast as it can until stopped: how much Python ran meanwhile."""

    def __init__(self):
        super().__init__(daemon=True)
        self.count = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.count += 1


def silent_listener():
    """A TCP port that accepts connections (the kernel's backlog) and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    return server


def test_link_to_a_silent_peer_releases_the_gil(decoder):
    server = silent_listener()
    counter = Counter()
    counter.start()
    time.sleep(0.05)  # the counter is running
    try:
        before = counter.count
        started = time.monotonic()
        ret, rets = decoder.link_clusters([cluster(1, server.getsockname()[1])], timeout=LINK_TIMEOUT_MS)
        waited = time.monotonic() - started
        during = counter.count - before
    finally:
        counter.stop.set()
        counter.join()
        server.close()
    assert ret != LLMStatusCode.LLM_SUCCESS and rets == [ret]
    assert waited >= LINK_TIMEOUT_MS / 1000 * 0.8, f"the link returned after {waited:.2f} s"
    # Held GIL: the counter would get only the interpreter's switch interval
    # slices (none while the call blocks); released: it runs the whole time.
    assert during > 100_000, f"the counter ran {during} times in {waited:.2f} s"


def test_concurrent_calls_and_finalize_do_not_crash(decoder):
    manager = decoder.cache_manager
    arrays = [np.zeros((4, 8), dtype=np.int32) for _ in range(2)]
    cache = manager.register_blocks_cache(CacheDesc(2, [4, 8], DataType.DT_INT32), arrays)
    errors, statuses = [], []

    def pull_until_finalized():
        while True:
            try:
                manager.pull_blocks(BlocksCacheKey(1, 0), cache, [0], [0])
            except LLMException as error:
                statuses.append(error.status_code)
                if error.status_code == LLMStatusCode.LLM_ENGINE_FINALIZED:
                    return
            except Exception as error:  # noqa: BLE001 - any other exception fails the test
                errors.append(error)
                return

    threads = [threading.Thread(target=pull_until_finalized) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    decoder.finalize()
    for t in threads:
        t.join(10)
    assert not errors and not any(t.is_alive() for t in threads)
    # Before finalize: no link; racing it: the native layer's LLM_FAILED; after: finalized.
    assert set(statuses) <= {LLMStatusCode.LLM_NOT_YET_LINK, LLMStatusCode.LLM_FAILED,
                             LLMStatusCode.LLM_ENGINE_FINALIZED}
    assert LLMStatusCode.LLM_NOT_YET_LINK in statuses
