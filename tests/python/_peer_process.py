"""A peer of the Python tests: a second, real process (multiprocessing spawn)
that runs `target(conn)` and answers commands over a Pipe. conftest.Peer (the
llm_datadist prompt, _peer.py) and test_hixl.HixlPeer (_hixl_peer.py) are
this with their own first reply."""
import multiprocessing

PEER_TIMEOUT_S = 60


class PeerProcess:
    """Starts `target(conn)` in a spawned process; `self.first` is its first reply."""

    def __init__(self, target, what="peer"):
        self._what = what
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(target=target, args=(child,), daemon=True)
        self.process.start()
        self.first = self._recv()

    def _recv(self):
        if not self._conn.poll(PEER_TIMEOUT_S):
            raise TimeoutError(f"the {self._what} process did not answer")
        reply = self._conn.recv()
        if isinstance(reply, tuple) and reply and reply[0] == "error":
            raise RuntimeError(f"{self._what} error:\n{reply[1]}")
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
