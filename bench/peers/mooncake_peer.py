#!/usr/bin/env python3
"""Mooncake Transfer Engine reference (PyPI wheel mooncake-transfer-engine-non-cuda).

  mooncake_peer.py [--points 65536:128,1048576:128] [--time 2]

Starts a target process (TransferEngine, TCP protocol, P2P handshake: no
metadata server) that registers a buffer, then reads from it with
batch_transfer_sync_read from this process: descriptor i of a batch maps local
block i to remote block n-1-i (as llmdd_bench's default layout). One JSON line
per point (mode "mooncake"). Exit code 3: the wheel is not installed/usable.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402

MODE = "mooncake"


def make_engine():
    try:
        from mooncake.engine import TransferEngine
    except Exception as e:  # not installed
        peerlib.fail(MODE, "cannot import mooncake.engine: %s" % e)
    te = TransferEngine()
    rc = te.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
    if rc != 0:
        peerlib.fail(MODE, "TransferEngine.initialize returned %d" % rc, code=1)
    return te


def target(args):
    te = make_engine()
    buf, addr = peerlib.alloc(args.bytes, 0x5A)
    if te.register_memory(addr, args.bytes) != 0:
        peerlib.fail(MODE, "register_memory failed", code=1)
    print("READY %d %d %d" % (te.get_rpc_port(), addr, args.bytes), flush=True)
    sys.stdin.read()  # serve until the initiator closes the pipe


def initiator(args):
    points = peerlib.parse_points(args.points)
    need = max(s * b for s, b in points)
    proc = peerlib.spawn_target([os.path.abspath(__file__), "--role", "target", "--bytes", str(need)])
    try:
        words, last = peerlib.read_ready(proc)
        if words is None:
            peerlib.fail(MODE, "target did not start: %s" % last, code=3 if last and "import" in last else 1)
        port, raddr, _ = words
        raddr = int(raddr)
        te = make_engine()
        buf, addr = peerlib.alloc(need, 0xA5)
        if te.register_memory(addr, need) != 0:
            peerlib.fail(MODE, "register_memory failed", code=1)
        target_name = "127.0.0.1:%s" % port
        for size, batch in points:
            local = [addr + i * size for i in range(batch)]
            remote = [raddr + (batch - 1 - i) * size for i in range(batch)]
            lens = [size] * batch

            def call():
                rc = te.batch_transfer_sync_read(target_name, local, remote, lens)
                if rc != 0:
                    raise RuntimeError("batch_transfer_sync_read returned %d" % rc)

            samples, wall = peerlib.timed(call, args.time)
            peerlib.emit(peerlib.record(MODE, "read", "tcp", size, batch, samples, wall, layout="reversed"))
    finally:
        peerlib.stop_target(proc)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", default="initiator", choices=["initiator", "target"])
    ap.add_argument("--points", default="65536:128,1048576:128", help="size:batch,... (bytes)")
    ap.add_argument("--time", type=float, default=2.0, help="seconds per point")
    ap.add_argument("--bytes", type=int, default=0, help="target buffer bytes (internal)")
    args = ap.parse_args()
    if args.role == "target":
        target(args)
    else:
        initiator(args)
    # The wheels' native destructors may crash at interpreter teardown; the
    # results are printed and flushed by now, so leave without running them.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
