"""The other process of the hixl tests: a listening Hixl engine with one registered buffer.

Run by test_hixl.HixlPeer through multiprocessing (spawn, a real second
process). It initializes on a free port, registers SIZE bytes of a numpy
buffer filled with pattern(), reports ("ready", engine id, address), then
answers commands over a Pipe until told to exit: ("dump",) -> the buffer as
bytes, ("reset",) -> refill it, ("notifies",) -> get_notifies() as
(status, [(name, msg)]), ("exit",).
"""
import socket
import traceback

import numpy as np

SIZE = 1 << 20
SEED = 424242


def pattern(seed=SEED, size=SIZE):
    return np.random.default_rng(seed).integers(0, 256, size=size, dtype=np.uint8)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(conn):
    try:
        import hixl
        engine = hixl.Hixl()
        for _ in range(20):  # a free port may be taken before we bind it
            engine_id = f"127.0.0.1:{free_port()}"
            ret = engine.initialize(engine_id, {})
            if ret == hixl.SUCCESS:
                break
            assert ret == hixl.FAILED, ret
        buffer = pattern()
        ret, handle = engine.register_mem(hixl.MemDesc(int(buffer.ctypes.data), SIZE), hixl.MEM_HOST)
        assert ret == hixl.SUCCESS and handle != 0, (ret, handle)
        conn.send(("ready", engine_id, int(buffer.ctypes.data)))
        while True:
            command = conn.recv()
            if command[0] == "dump":
                conn.send(buffer.tobytes())
            elif command[0] == "reset":
                buffer[...] = pattern()
                conn.send("ok")
            elif command[0] == "notifies":
                ret, notifies = engine.get_notifies()
                conn.send((ret, [(n.name, n.notify_msg) for n in notifies]))
            elif command[0] == "exit":
                assert engine.deregister_mem(handle) == hixl.SUCCESS
                engine.finalize()
                conn.send("bye")
                return
    except Exception:  # the test reads it instead of a silent hang
        conn.send(("error", traceback.format_exc()))
