"""Ctrl-C during a long call returns promptly (docs/PYTHON.md, "Threads").

A child Python process transfers from a peer process that the test has
frozen (SIGSTOP), so the transfer cannot end before its timeout (20 s). The
test sends SIGINT to the child: KeyboardInterrupt must come within
INTERRUPT_BOUND_S, the engine must stay usable, and the buffer the call
named must not be written after the exception (the child refills it at once,
the peer resumes, and the bytes must stay as refilled); then the same
transfer, from the resumed peer, must deliver every byte. Over TCP: on the
same-host path a READ may copy out of the stopped peer's memory without
waiting for it (tests/integration/adxl_deadline_test.cc covers that path's
cancel against a peer frozen where it must answer).
"""
import os
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import _hixl_peer  # noqa: E402
import _peer  # noqa: E402
from _peer_process import PeerProcess  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
INTERRUPT_BOUND_S = 1.0   # the design: ~50 ms slices plus the cancel; slack for a loaded host
TRANSFER_TIMEOUT_MS = 20000

# Both children: print "ready" after a first transfer verified the path, then
# on "go" fill the buffer with a sentinel, print "transferring" and start the
# long transfer; on KeyboardInterrupt refill it and print "interrupted"; on
# "continued" (the peer runs again) wait, check nothing landed, transfer
# again, verify, print "ok".
COMMON = r"""
import sys, time
import numpy as np
sys.path.insert(0, HERE)
SENTINEL = 0xEE

def line():
    return sys.stdin.readline().strip()

def interrupted_transfer(buffer, transfer, verify):
    assert line() == "go"
    buffer[...] = SENTINEL
    print("transferring", flush=True)
    try:
        result = transfer()
        print(f"returned {result} without an interrupt", flush=True)
        return
    except KeyboardInterrupt:
        buffer[...] = SENTINEL          # the caller owns the buffer again
        print("interrupted", flush=True)
    assert line() == "continued"
    time.sleep(0.5)                     # what the peer still sends arrives now, if it could land
    late = int(np.count_nonzero(buffer != SENTINEL))
    assert late == 0, f"{late} bytes were written after KeyboardInterrupt"
    transfer()
    verify()
    print("ok", flush=True)
"""

HIXL_CHILD = COMMON + r"""
import hixl, _hixl_peer
engine_id, remote = sys.argv[1], int(sys.argv[2])
engine = hixl.Hixl()
assert engine.initialize("127.0.0.1", {"llmdd.Transport": "tcp"}) == hixl.SUCCESS
buffer = np.zeros(_hixl_peer.SIZE, dtype=np.uint8)
ret, handle = engine.register_mem(hixl.MemDesc(buffer.ctypes.data, buffer.size), hixl.MEM_HOST)
assert ret == hixl.SUCCESS
assert engine.connect(engine_id, timeout_in_millis=5000) == hixl.SUCCESS
ops = [hixl.TransferOpDesc(buffer.ctypes.data, remote, buffer.size)]

def transfer():
    ret = engine.transfer_sync(engine_id, hixl.READ, ops, timeout_in_millis=TRANSFER_TIMEOUT_MS)
    assert ret == hixl.SUCCESS, ret
    return ret

def verify():
    assert np.array_equal(buffer, _hixl_peer.pattern()), "the bytes differ from the peer's"

transfer()
verify()
print("ready", flush=True)
interrupted_transfer(buffer, transfer, verify)
assert engine.disconnect(engine_id) == hixl.SUCCESS
engine.finalize()
"""

DATADIST_CHILD = COMMON + r"""
import _peer
from conftest import cluster, options
from llm_datadist import BlocksCacheKey, CacheDesc, DataType, LLMDataDist, LLMRole, LLMStatusCode
port = int(sys.argv[1])
_, num_tensors, shape, dtype, _, _ = _peer.LAYOUT["blocks"]
datadist = LLMDataDist(LLMRole.DECODER, 2)
init_options = options(sync_kv_timeout=TRANSFER_TIMEOUT_MS)
# TCP: a same-host transfer may copy out of the stopped peer's memory
# without waiting for it (as the hixl children, for the same reason).
init_options["llmdd.Transport"] = "tcp"
datadist.init(init_options)
ret, _ = datadist.link_clusters([cluster(_peer.PROMPT_CLUSTER, port)], timeout=5000)
assert ret == LLMStatusCode.LLM_SUCCESS, ret
tensors = [np.zeros(shape, dtype=dtype) for _ in range(num_tensors)]
cache = datadist.cache_manager.register_blocks_cache(CacheDesc(num_tensors, shape, DataType.DT_FLOAT16), tensors)

class Tensors:
    # The cache's tensors as the one buffer interrupted_transfer fills and checks.
    def __setitem__(self, key, value):
        for t in tensors:
            t.view(np.uint8)[...] = value
    def __ne__(self, value):
        return np.concatenate([t.view(np.uint8).ravel() for t in tensors]) != value

blocks = list(range(shape[0]))

def transfer():
    datadist.cache_manager.pull_blocks(BlocksCacheKey(_peer.PROMPT_CLUSTER, 0), cache, blocks, blocks)

def verify():
    for t, tensor in enumerate(tensors):
        expected = _peer.pattern(_peer.seed_of(_peer.PROMPT_CLUSTER, "blocks", t), shape, dtype)
        assert np.array_equal(tensor.view(np.uint8), expected.view(np.uint8)), f"tensor {t} differs"

transfer()
verify()
print("ready", flush=True)
interrupted_transfer(Tensors(), transfer, verify)
datadist.unlink_clusters([cluster(_peer.PROMPT_CLUSTER, port)], timeout=5000)
datadist.finalize()
"""


def stop(pid):
    """SIGSTOP, then wait until every thread of the process is stopped: the signal only queues the stop,
    and a peer thread that runs a little longer could still answer the transfer about to start."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:  # the thread ended
                pass
        if states and all(state in ("T", "t") for state in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop")


def interrupt_a_transfer_from_a_frozen_peer(tmp_path, script, args, peer_pid):
    path = tmp_path / "child.py"
    path.write_text(f"HERE = {HERE!r}\nTRANSFER_TIMEOUT_MS = {TRANSFER_TIMEOUT_MS}\n" + script)
    child = subprocess.Popen([sys.executable, str(path), *map(str, args)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE)
    frozen = False
    try:
        def expect(word):
            got = child.stdout.readline().strip()
            assert got == word, f"expected {word!r}, got {got!r}; stderr:\n{child.stderr.read()}"

        def say(word):
            child.stdin.write(word + "\n")
            child.stdin.flush()

        expect("ready")
        stop(peer_pid)
        frozen = True
        say("go")
        expect("transferring")
        time.sleep(0.3)  # the call is waiting for the frozen peer
        assert child.poll() is None
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        expect("interrupted")
        took = time.monotonic() - sent
        os.kill(peer_pid, signal.SIGCONT)
        frozen = False
        say("continued")
        expect("ok")
        out, err = child.communicate(timeout=60)
    finally:
        if frozen:
            os.kill(peer_pid, signal.SIGCONT)
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert took < INTERRUPT_BOUND_S, f"KeyboardInterrupt came {took:.2f} s after SIGINT"
    return took


@pytest.fixture
def hixl_peer():
    p = PeerProcess(_hixl_peer.serve, "hixl peer")
    yield p
    p.close()


def test_ctrl_c_interrupts_hixl_transfer_sync_from_a_frozen_peer(tmp_path, hixl_peer):
    _, engine_id, addr = hixl_peer.first
    took = interrupt_a_transfer_from_a_frozen_peer(tmp_path, HIXL_CHILD, [engine_id, addr], hixl_peer.process.pid)
    print(f"transfer_sync: KeyboardInterrupt {took * 1000:.0f} ms after SIGINT")


def test_ctrl_c_interrupts_pull_blocks_from_a_frozen_peer(tmp_path, peer):
    took = interrupt_a_transfer_from_a_frozen_peer(tmp_path, DATADIST_CHILD, [peer.port], peer.process.pid)
    print(f"pull_blocks: KeyboardInterrupt {took * 1000:.0f} ms after SIGINT")


HANDLER_CHILD = r"""
import signal, sys, time
import numpy as np
sys.path.insert(0, HERE)
import hixl, _hixl_peer
engine_id, remote = sys.argv[1], int(sys.argv[2])
seen = []
signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))   # a handler that does not raise
engine = hixl.Hixl()
assert engine.initialize("127.0.0.1", {"llmdd.Transport": "tcp"}) == hixl.SUCCESS
buffer = np.zeros(_hixl_peer.SIZE, dtype=np.uint8)
assert engine.register_mem(hixl.MemDesc(buffer.ctypes.data, buffer.size), hixl.MEM_HOST)[0] == hixl.SUCCESS
assert engine.connect(engine_id, timeout_in_millis=5000) == hixl.SUCCESS
ops = [hixl.TransferOpDesc(buffer.ctypes.data, remote, buffer.size)]
assert engine.transfer_sync(engine_id, hixl.READ, ops, timeout_in_millis=5000) == hixl.SUCCESS
buffer[...] = 0
print("ready", flush=True)
assert sys.stdin.readline().strip() == "go"
print("transferring", flush=True)
ret = engine.transfer_sync(engine_id, hixl.READ, ops, timeout_in_millis=TRANSFER_TIMEOUT_MS)
assert ret == hixl.SUCCESS, ret
assert np.array_equal(buffer, _hixl_peer.pattern()), "the bytes differ from the peer's"
print(f"returned {ret} after {len(seen)} SIGINT", flush=True)
engine.finalize()
"""


def test_sigint_whose_handler_does_not_raise_leaves_transfer_sync_to_complete(tmp_path, hixl_peer):
    """A program's own SIGINT handler that does not raise (a graceful-shutdown flag): the transfer the
    signal cut short runs again and completes once the peer resumes; the handler ran once."""
    _, engine_id, addr = hixl_peer.first
    path = tmp_path / "child.py"
    path.write_text(f"HERE = {HERE!r}\nTRANSFER_TIMEOUT_MS = {TRANSFER_TIMEOUT_MS}\n" + HANDLER_CHILD)
    child = subprocess.Popen([sys.executable, str(path), engine_id, str(addr)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE)
    pid = hixl_peer.process.pid
    frozen = False
    try:
        assert child.stdout.readline().strip() == "ready"
        stop(pid)
        frozen = True
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "transferring"
        time.sleep(0.3)
        child.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert child.poll() is None, "the transfer ended while the peer was frozen"
        os.kill(pid, signal.SIGCONT)
        frozen = False
        out, err = child.communicate(timeout=60)
    finally:
        if frozen:
            os.kill(pid, signal.SIGCONT)
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert out.strip() == "returned 0 after 1 SIGINT", out + err
