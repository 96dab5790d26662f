"""The hixl module (CANN's HIXL Python API) against a second process.

Every transfer is verified byte by byte against the peer's buffer; every
error is a returned status (as in CANN's module), never an exception, except
wrong argument types (TypeError).
"""
import os
import socket
import sys
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import _hixl_peer  # noqa: E402
from _peer_process import PeerProcess  # noqa: E402
import hixl  # noqa: E402

LOCAL_SIZE = 1 << 20


class HixlPeer(PeerProcess):
    def __init__(self):
        super().__init__(_hixl_peer.serve, "hixl peer")
        _, self.engine_id, self.addr = self.first

    def dump(self):
        return np.frombuffer(self.call("dump"), dtype=np.uint8)


@pytest.fixture(scope="module")
def peer():
    p = HixlPeer()
    yield p
    p.close()


class Client:
    """An initialized client engine with a registered local buffer, connected to the peer."""

    def __init__(self, peer):
        self.peer = peer
        self.engine = hixl.Hixl()
        assert self.engine.initialize("127.0.0.1") == hixl.SUCCESS
        self.buffer = np.zeros(LOCAL_SIZE, dtype=np.uint8)
        self.addr = int(self.buffer.ctypes.data)
        ret, self.handle = self.engine.register_mem(hixl.MemDesc(self.addr, LOCAL_SIZE), hixl.MEM_HOST)
        assert ret == hixl.SUCCESS and self.handle != 0
        assert self.engine.connect(peer.engine_id, timeout_in_millis=5000) == hixl.SUCCESS


@pytest.fixture
def client(peer):
    c = Client(peer)
    yield c
    c.engine.finalize()
    peer.call("reset")


def descs(local, remote, pieces):
    """TransferOpDescs for (local offset, remote offset, length) triples."""
    return [hixl.TransferOpDesc(local + lo, remote + ro, n) for lo, ro, n in pieces]


PIECES = [(0, 4096, 4096), (8192, 0, 1), (10000, 500_000, 65_536 + 3), (200_000, LOCAL_SIZE - 300_000, 300_000)]


def test_names_values_and_defaults():
    assert (hixl.SUCCESS, hixl.PARAM_INVALID, hixl.TIMEOUT, hixl.NOT_CONNECTED, hixl.ALREADY_CONNECTED,
            hixl.NOTIFY_FAILED, hixl.UNSUPPORTED, hixl.FAILED, hixl.RESOURCE_EXHAUSTED) == (
        0, 103900, 103901, 103902, 103903, 103904, 103905, 503900, 203900)
    assert (hixl.FEATURE_SUPPORTED, hixl.FEATURE_NOT_SUPPORTED) == (1, 0)
    assert hixl.OPTION_AUTO_CONNECT == "AutoConnect" and hixl.OPTION_BUFFER_POOL == "BufferPool"
    assert hixl.OPTION_LOCAL_COMM_RES == "LocalCommRes"
    assert hixl.OPTION_GLOBAL_RESOURCE_CONFIG == "GlobalResourceConfig"
    assert (hixl.MEM_DEVICE, hixl.MEM_HOST, hixl.READ, hixl.WRITE) == (0, 1, 0, 1)
    assert hixl.MemType.MEM_HOST == hixl.MEM_HOST and hixl.TransferOp.WRITE == hixl.WRITE
    assert (hixl.AUTO_CONNECT, hixl.CLIENT_SERVER_COMM) == (0, 1)
    assert [int(s) for s in (hixl.NOT_CONNECT, hixl.CONNECT_PENDING, hixl.CONNECTING, hixl.CONNECTED,
                             hixl.CONNECT_FAILED, hixl.DISCONNECT_PENDING, hixl.DISCONNECTING)] == list(range(7))
    assert [int(s) for s in (hixl.TransferStatus.WAITING, hixl.TransferStatus.COMPLETED, hixl.TransferStatus.TIMEOUT,
                             hixl.TransferStatus.FAILED)] == [0, 1, 2, 3]
    assert not hasattr(hixl, "WAITING") and not hasattr(hixl, "COMPLETED")  # CANN does not export these
    assert hixl.TIMEOUT == 103901  # the status, not TransferStatus.TIMEOUT
    desc = hixl.MemDesc(123, 456)
    assert (desc.addr, desc.len, desc.local_only) == (123, 456, False)
    op = hixl.TransferOpDesc(local_addr=1, remote_addr=2, len=3)
    assert (op.local_addr, op.remote_addr, op.len) == (1, 2, 3)
    assert hixl.TransferArgs().user_data == 0
    args = hixl.GetTransferStatusArgs()
    assert (args.max_query_count, args.skip_waiting) == (2**32 - 1, False)
    notify = hixl.NotifyDesc("name", "message")
    assert (notify.name, notify.notify_msg) == ("name", "message")
    result = hixl.TransferResult()
    assert (result.req, result.user_data, result.status) == (0, 0, hixl.TransferStatus.WAITING)


def test_get_capability():
    assert hixl.get_capability(hixl.AUTO_CONNECT) == (hixl.SUCCESS, hixl.FEATURE_SUPPORTED)
    ret, value = hixl.get_capability(hixl.CLIENT_SERVER_COMM)
    assert ret == hixl.SUCCESS and value in (hixl.FEATURE_SUPPORTED, hixl.FEATURE_NOT_SUPPORTED)


def test_read_is_verified_byte_by_byte(client, peer):
    assert client.engine.transfer_sync(peer.engine_id, hixl.READ, descs(client.addr, peer.addr, PIECES),
                                       timeout_in_millis=5000) == hixl.SUCCESS
    expected = np.zeros(LOCAL_SIZE, dtype=np.uint8)
    source = _hixl_peer.pattern()
    for lo, ro, n in PIECES:
        expected[lo:lo + n] = source[ro:ro + n]
    assert np.array_equal(client.buffer, expected)


def test_write_is_verified_byte_by_byte(client, peer):
    client.buffer[...] = np.random.default_rng(7).integers(0, 256, size=LOCAL_SIZE, dtype=np.uint8)
    assert client.engine.transfer_sync(peer.engine_id, hixl.WRITE, descs(client.addr, peer.addr, PIECES),
                                       5000) == hixl.SUCCESS
    expected = _hixl_peer.pattern()
    for lo, ro, n in PIECES:
        expected[ro:ro + n] = client.buffer[lo:lo + n]
    assert np.array_equal(peer.dump(), expected)


def wait_for(engine, req, timeout_s=10):
    deadline = time.monotonic() + timeout_s
    while True:
        ret, status = engine.get_transfer_status(req)
        if status != hixl.TransferStatus.WAITING or time.monotonic() > deadline:
            return ret, status
        time.sleep(0.001)


def test_transfer_async_and_its_status(client, peer):
    args = hixl.TransferArgs()
    args.user_data = 0xABCDEF
    ret, req = client.engine.transfer_async(peer.engine_id, hixl.READ, descs(client.addr, peer.addr, PIECES), args)
    assert ret == hixl.SUCCESS and req != 0
    assert wait_for(client.engine, req) == (hixl.SUCCESS, hixl.TransferStatus.COMPLETED)
    source = _hixl_peer.pattern()
    for lo, ro, n in PIECES:
        assert np.array_equal(client.buffer[lo:lo + n], source[ro:ro + n])
    # A terminal status releases the request: a second query knows it no more.
    assert client.engine.get_transfer_status(req) == (hixl.PARAM_INVALID, hixl.TransferStatus.FAILED)
    assert client.engine.get_transfer_status(12345) == (hixl.PARAM_INVALID, hixl.TransferStatus.FAILED)

    # Several writes, then the bulk query: each with its user_data, in order.
    client.buffer[...] = 9
    reqs = []
    for i in range(4):
        args = hixl.TransferArgs()
        args.user_data = 100 + i
        ret, req = client.engine.transfer_async(peer.engine_id, hixl.WRITE,
                                                [hixl.TransferOpDesc(client.addr, peer.addr + i * 1000, 1000)], args)
        assert ret == hixl.SUCCESS
        reqs.append(req)
    done = {}
    deadline = time.monotonic() + 10
    while len(done) < 4 and time.monotonic() < deadline:
        ret, results = client.engine.get_all_transfer_status(hixl.GetTransferStatusArgs(skip_waiting=True))
        assert ret == hixl.SUCCESS
        for result in results:
            done[result.req] = (result.user_data, result.status)
        time.sleep(0.001)
    assert done == {req: (100 + i, hixl.TransferStatus.COMPLETED) for i, req in enumerate(reqs)}
    assert (peer.dump()[:4000] == 9).all()


def test_notify_arrives_after_the_write_it_follows(client, peer):
    client.buffer[:4096] = 77
    assert client.engine.transfer_sync(peer.engine_id, hixl.WRITE,
                                       [hixl.TransferOpDesc(client.addr, peer.addr, 4096)]) == hixl.SUCCESS
    notify = hixl.NotifyDesc("req-7", "blocks 0..3 landed")
    assert client.engine.send_notify(peer.engine_id, notify, timeout_in_millis=5000) == hixl.SUCCESS
    assert client.engine.send_notify(peer.engine_id, hixl.NotifyDesc("req-8", "")) == hixl.SUCCESS
    ret, notifies = peer.call("notifies")
    assert ret == hixl.SUCCESS
    assert notifies == [("req-7", "blocks 0..3 landed"), ("req-8", "")]
    assert peer.call("notifies") == (hixl.SUCCESS, [])  # taken once
    assert (peer.dump()[:4096] == 77).all()
    # Nothing was sent to the client.
    assert client.engine.get_notifies() == (hixl.SUCCESS, [])


def test_error_statuses(client, peer):
    engine = client.engine
    one = [hixl.TransferOpDesc(client.addr, peer.addr, 64)]
    # Not connected to that remote.
    assert engine.transfer_sync("127.0.0.1:1", hixl.READ, one) == hixl.NOT_CONNECTED
    ret, req = engine.transfer_async("127.0.0.1:1", hixl.READ, one)
    assert (ret, req) == (hixl.NOT_CONNECTED, 0)
    assert engine.send_notify("127.0.0.1:1", hixl.NotifyDesc("a", "b")) == hixl.NOT_CONNECTED
    # Bad arguments.
    assert engine.transfer_sync(peer.engine_id, hixl.READ, one, timeout_in_millis=0) == hixl.PARAM_INVALID
    assert engine.transfer_sync(peer.engine_id, hixl.READ, one, timeout_in_millis=-5) == hixl.PARAM_INVALID
    assert engine.connect(peer.engine_id, 0) == hixl.PARAM_INVALID
    assert engine.connect("not an engine id") == hixl.PARAM_INVALID
    assert engine.connect(peer.engine_id) == hixl.ALREADY_CONNECTED
    # A remote range the peer never registered is refused by the peer; nothing is written.
    client.buffer[:64] = 5
    outside = [hixl.TransferOpDesc(client.addr, peer.addr + _hixl_peer.SIZE - 32, 64)]
    assert engine.transfer_sync(peer.engine_id, hixl.READ, outside) == hixl.PARAM_INVALID
    assert engine.transfer_sync(peer.engine_id, hixl.WRITE, outside) == hixl.PARAM_INVALID
    assert (client.buffer[:64] == 5).all() and np.array_equal(peer.dump(), _hixl_peer.pattern())
    ret, req = engine.transfer_async(peer.engine_id, hixl.READ, outside)
    assert ret == hixl.SUCCESS and wait_for(engine, req) == (hixl.FAILED, hixl.TransferStatus.FAILED)
    # Memory: a null address or handle, a length of 0 (an unknown handle is SUCCESS, logged, as docs/API.md says).
    assert engine.register_mem(hixl.MemDesc(0, 64), hixl.MEM_HOST) == (hixl.PARAM_INVALID, 0)
    # A length of 0 is refused as the C++ engine refuses it (docs/API.md RegisterMem).
    empty = np.zeros(64, dtype=np.uint8)
    assert engine.register_mem(hixl.MemDesc(empty.ctypes.data, 0), hixl.MEM_HOST) == (hixl.PARAM_INVALID, 0)
    assert engine.deregister_mem(0) == hixl.PARAM_INVALID
    # Wrong types are TypeError, before any native call.
    with pytest.raises(TypeError):
        engine.transfer_sync(peer.engine_id, "READ", one)
    with pytest.raises(TypeError):
        engine.transfer_sync(peer.engine_id, hixl.READ, one[0])
    with pytest.raises(TypeError):
        hixl.MemDesc(-1, 64)
    with pytest.raises(TypeError):
        hixl.TransferOpDesc(1, 2, -3)
    with pytest.raises(TypeError):
        engine.connect(peer.engine_id, 2**40)
    # After disconnect, transfers are NOT_CONNECTED.
    assert engine.disconnect(peer.engine_id) == hixl.SUCCESS
    assert engine.transfer_sync(peer.engine_id, hixl.READ, one) == hixl.NOT_CONNECTED
    assert engine.disconnect(peer.engine_id) == hixl.NOT_CONNECTED


def test_calls_before_initialize_and_after_finalize_return_failed(peer):
    engine = hixl.Hixl()
    one = [hixl.TransferOpDesc(1, 2, 3)]
    assert engine.register_mem(hixl.MemDesc(1, 2), hixl.MEM_HOST) == (hixl.FAILED, 0)
    assert engine.connect(peer.engine_id) == hixl.FAILED
    assert engine.transfer_sync(peer.engine_id, hixl.READ, one) == hixl.FAILED
    assert engine.get_notifies() == (hixl.FAILED, [])
    engine.finalize()  # nothing to do
    assert engine.initialize("256.0.0.1:1") == hixl.PARAM_INVALID
    assert engine.initialize("127.0.0.1") == hixl.SUCCESS
    assert engine.initialize("127.0.0.1") == hixl.SUCCESS  # a second call changes nothing
    assert engine.connect(peer.engine_id, 5000) == hixl.SUCCESS
    engine.finalize()
    engine.finalize()
    assert engine.transfer_sync(peer.engine_id, hixl.READ, one) == hixl.FAILED
    assert engine.get_transfer_status(1) == (hixl.FAILED, hixl.TransferStatus.FAILED)


def test_async_connect(peer):
    engine = hixl.Hixl()
    assert engine.initialize("127.0.0.1") == hixl.SUCCESS
    try:
        assert engine.get_async_connect_status(peer.engine_id) == (hixl.SUCCESS, hixl.NOT_CONNECT)
        assert engine.connect_async(peer.engine_id, 5000) == hixl.SUCCESS
        deadline = time.monotonic() + 10
        while engine.get_async_connect_status(peer.engine_id)[1] != hixl.CONNECTED and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine.get_async_connect_status(peer.engine_id) == (hixl.SUCCESS, hixl.CONNECTED)
        assert engine.get_all_async_connect_status() == (hixl.SUCCESS, {peer.engine_id: hixl.CONNECTED})
        assert engine.disconnect_async(peer.engine_id) == hixl.SUCCESS
        while engine.get_async_connect_status(peer.engine_id)[1] != hixl.NOT_CONNECT and time.monotonic() < deadline:
            time.sleep(0.005)
        assert engine.get_async_connect_status(peer.engine_id) == (hixl.SUCCESS, hixl.NOT_CONNECT)
    finally:
        engine.finalize()


def test_blocking_calls_release_the_gil():
    server = socket.socket()  # accepts (the kernel's backlog) and never answers
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    engine = hixl.Hixl()
    assert engine.initialize("127.0.0.1") == hixl.SUCCESS
    count, stop = [0], threading.Event()

    def counter():
        while not stop.is_set():
            count[0] += 1

    thread = threading.Thread(target=counter, daemon=True)
    thread.start()
    time.sleep(0.05)
    try:
        before, started = count[0], time.monotonic()
        ret = engine.connect(f"127.0.0.1:{server.getsockname()[1]}", timeout_in_millis=1500)
        waited, during = time.monotonic() - started, count[0] - before
    finally:
        stop.set()
        thread.join()
        server.close()
        engine.finalize()
    assert ret in (hixl.TIMEOUT, hixl.FAILED)
    assert waited >= 1.2, f"connect returned after {waited:.2f} s"
    assert during > 100_000, f"the counter ran {during} times in {waited:.2f} s"


def test_threads_transfer_at_once_and_finalize_races_them(client, peer):
    source = _hixl_peer.pattern()
    errors, statuses = [], []

    def reader(slot):
        try:
            for _ in range(50):
                lo = slot * 65536
                ret = client.engine.transfer_sync(peer.engine_id, hixl.READ,
                                                  [hixl.TransferOpDesc(client.addr + lo, peer.addr + lo, 65536)])
                statuses.append(ret)
                if ret != hixl.SUCCESS:
                    return
                if not np.array_equal(client.buffer[lo:lo + 65536], source[lo:lo + 65536]):
                    errors.append(slot)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.01)
    client.engine.finalize()  # waits for the calls in flight; later ones return FAILED
    for t in threads:
        t.join(30)
    assert not errors
    assert set(statuses) <= {hixl.SUCCESS, hixl.FAILED} and hixl.SUCCESS in statuses


CTRL_C_SCRIPT = r"""
import socket, sys, time
import hixl
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(16)                      # accepts (the kernel's backlog) and never answers
engine = hixl.Hixl()
assert engine.initialize("127.0.0.1") == hixl.SUCCESS
print("waiting", flush=True)
started = time.monotonic()
try:
    ret = engine.connect(f"127.0.0.1:{server.getsockname()[1]}", timeout_in_millis=3000)
    print(f"returned {ret} without an interrupt", flush=True)
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - started:.2f}", flush=True)
engine.finalize()
"""


def test_ctrl_c_during_connect_returns_at_once(tmp_path):
    """SIGINT while connect() waits for a silent peer (3 s timeout): KeyboardInterrupt at once (the
    connect goes on in the background until its timeout, test_interrupt.py has the transfers), and
    finalize() afterwards waits for it and does not crash."""
    import signal
    import subprocess
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "waiting"
        time.sleep(0.3)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert out.startswith("interrupted after "), out + err
    assert float(out.split()[-1]) < 0.3 + 1.0, out


def test_get_metrics_counts_exactly_what_was_moved(client, peer):
    assert hixl.Hixl().get_metrics() == (hixl.FAILED, None)  # not initialized
    ret, before = client.engine.get_metrics()
    assert ret == hixl.SUCCESS and before["initialized"] is True
    assert [t for t in before["transfers"] if t["op"] == "read"] == []
    assert client.engine.transfer_sync(peer.engine_id, hixl.READ, descs(client.addr, peer.addr, PIECES),
                                       timeout_in_millis=5000) == hixl.SUCCESS
    ret, after = client.engine.get_metrics()
    assert ret == hixl.SUCCESS
    reads = [t for t in after["transfers"] if t["op"] == "read"]
    assert len(reads) == 1 and reads[0]["status"] == "SUCCESS" and reads[0]["count"] == 1
    assert sum(b["bytes"] for b in after["bytes"] if b["op"] == "read") == sum(n for _, _, n in PIECES)
    assert after["descriptors"]["read"]["submitted"] == len(PIECES)
    assert after["gauges"]["registered_regions"] == 1
    assert after["gauges"]["registered_bytes"] == LOCAL_SIZE
