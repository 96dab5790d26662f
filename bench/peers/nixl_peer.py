#!/usr/bin/env python3
"""NIXL reference (PyPI wheel nixl-cu12, UCX backend, host DRAM).

  nixl_peer.py [--points 65536:128,1048576:128] [--time 2] [--ucx-tls tcp]

Starts a target agent process that registers a DRAM buffer and publishes its
agent metadata over a pipe; this process (the initiator agent) adds it and
READs from it with one prepared transfer request per point, reposted and
polled to completion for every call. Descriptor i maps local block i to remote
block n-1-i. --ucx-tls tcp (default) sets UCX_TLS=tcp and UCX_NET_DEVICES=lo for
both agents, so UCX moves the bytes over TCP loopback; --ucx-tls default
leaves UCX to choose (on one host it picks shared memory / CMA).
One JSON line per point (mode "nixl"). Exit code 3: the wheel is not usable.
"""
import argparse
import base64
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402

MODE = "nixl"


def load_api():
    for name in ("nixl._api", "nixl_cu12._api", "nixl_cu13._api"):
        try:
            mod = __import__(name, fromlist=["nixl_agent", "nixl_agent_config"])
            return mod.nixl_agent, mod.nixl_agent_config
        except Exception as e:  # try the next spelling
            err = e
    peerlib.fail(MODE, "cannot import nixl: %s" % err)


def make_agent(name):
    nixl_agent, nixl_agent_config = load_api()
    try:
        agent = nixl_agent(name, nixl_agent_config(backends=["UCX"]))
    except Exception as e:
        peerlib.fail(MODE, "cannot create a NIXL agent with the UCX backend: %s" % e, code=3)
    if "UCX" not in agent.backends:
        peerlib.fail(MODE, "the UCX backend plugin is not available", code=3)
    return agent


def target(args):
    agent = make_agent("llmdd-bench-target")
    buf, addr = peerlib.alloc(args.bytes, 0x5A)
    agent.register_memory([(addr, args.bytes, 0, "")], "DRAM")
    meta = base64.b64encode(agent.get_agent_metadata()).decode()
    print("READY %d %d %s" % (addr, args.bytes, meta), flush=True)
    # The initiator's metadata, so the target can answer its connection.
    line = sys.stdin.readline().strip()
    if line:
        agent.add_remote_agent(base64.b64decode(line))
    sys.stdin.read()  # serve until the initiator closes the pipe


def initiator(args):
    env = dict(os.environ)
    transport = "auto"
    if args.ucx_tls == "tcp":
        env["UCX_TLS"] = "tcp"
        env["UCX_NET_DEVICES"] = "lo"
        os.environ["UCX_TLS"] = "tcp"
        os.environ["UCX_NET_DEVICES"] = "lo"
        transport = "tcp"
    points = peerlib.parse_points(args.points)
    need = max(s * b for s, b in points)
    proc = peerlib.spawn_target([os.path.abspath(__file__), "--role", "target", "--bytes", str(need)], env=env)
    try:
        words, last = peerlib.read_ready(proc)
        if words is None:
            peerlib.fail(MODE, "target did not start: %s" % last, code=3)
        raddr, _, meta = words
        raddr = int(raddr)
        agent = make_agent("llmdd-bench-initiator")
        buf, addr = peerlib.alloc(need, 0xA5)
        agent.register_memory([(addr, need, 0, "")], "DRAM")
        remote_name = agent.add_remote_agent(base64.b64decode(meta))
        proc.stdin.write((base64.b64encode(agent.get_agent_metadata()).decode() + "\n").encode())
        proc.stdin.flush()
        for size, batch in points:
            local = agent.get_xfer_descs([(addr + i * size, size, 0) for i in range(batch)], "DRAM")
            remote = agent.get_xfer_descs([(raddr + (batch - 1 - i) * size, size, 0) for i in range(batch)], "DRAM")
            handle = agent.initialize_xfer("READ", local, remote, remote_name)

            def call():
                state = agent.transfer(handle)
                while state == "PROC":
                    state = agent.check_xfer_state(handle)
                if state != "DONE":
                    raise RuntimeError("NIXL transfer failed (%s)" % state)

            samples, wall = peerlib.timed(call, args.time)
            agent.release_xfer_handle(handle)
            peerlib.emit(peerlib.record(MODE, "read", transport, size, batch, samples, wall, layout="reversed",
                                        backend="UCX"))
    finally:
        peerlib.stop_target(proc)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", default="initiator", choices=["initiator", "target"])
    ap.add_argument("--points", default="65536:128,1048576:128", help="size:batch,... (bytes)")
    ap.add_argument("--time", type=float, default=2.0, help="seconds per point")
    ap.add_argument("--ucx-tls", default="tcp", choices=["tcp", "default"])
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
