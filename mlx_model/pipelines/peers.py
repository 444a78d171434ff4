"""The processes of a batch run as MLX sees them (``mx.distributed``), with every wait bounded.

MLX's collectives block until every rank takes part and have no timeout: a rank that never
comes up, is stopped (SIGSTOP, a sleeping laptop) or hangs would keep the others waiting
forever.  Here each collective runs on one thread of its own, on a CPU stream of its own
(MLX streams belong to the thread that made them), and the caller waits for it at most
``timeout`` seconds: past that, or when MLX reports the connection lost, :class:`PeerLost`
is raised and the caller goes on without the group (the abandoned collective stays blocked
on its own thread and stream; the default stream, and so image making, is not affected).

``mx.distributed.init()`` holds the GIL while it waits, so its bound is a watchdog process:
when init does not finish in time it prints one line naming the ranks (hosts and ports of the
launcher's hostfile) that did not answer and ends the waiting process.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
from pathlib import Path

from weights.core.errors import MobileOError

__all__ = ["DEFAULT_PEER_TIMEOUT", "PeerLost", "Peers", "end_process", "open_group"]

DEFAULT_PEER_TIMEOUT = 60.0  # seconds a rank waits for the others beyond the work it expects of them
_abandoned = False  # a collective was left blocked on its thread in this process (see end_process)


class PeerLost(Exception):
    """A collective did not finish in time, or MLX lost a connection; the message says which."""


def _hostfile() -> list | None:
    path = os.environ.get("MLX_HOSTFILE")  # ring: a JSON list, one entry (a list of "ip:port") per rank
    if not path:
        return None
    try:
        hosts = json.loads(Path(path).read_text() or "[]")
    except (OSError, ValueError):
        return None
    return hosts if isinstance(hosts, list) and hosts else None


def launcher_size() -> int | None:
    """The number of processes a launcher started, from its environment (None: no launcher seen)."""
    hosts = _hostfile()
    if hosts:
        return len(hosts)
    for key in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MLX_WORLD_SIZE"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return None


def _silent_ranks(hostfile: str | None, me: str) -> list[str]:
    """The other ranks of the hostfile whose address refuses a connection ("rank 1 (10.0.0.2:5001)"),
    or, when every address accepts (or none is known), all of them: who did not answer."""
    try:
        hosts = json.loads(Path(hostfile).read_text()) if hostfile else []
    except (OSError, ValueError):
        hosts = []
    down, others = [], []
    for r, entry in enumerate(hosts if isinstance(hosts, list) else []):
        if str(r) == me:
            continue
        addrs = entry if isinstance(entry, list) else [entry]
        label = f"rank {r} ({', '.join(map(str, addrs))})"
        others.append(label)
        for addr in addrs:
            host, _, port = str(addr).rpartition(":")
            try:
                with socket.create_connection((host, int(port)), timeout=1.0):
                    pass
            except (OSError, ValueError):
                down.append(label)
                break
    return down or others


INIT_FIX = ("start every rank (the same mlx.launch command), check the hostfile's IPs and the firewall, "
            "or raise --peer-timeout.")


def _watchdog(parent: int, timeout: float, hostfile: str | None, me: str) -> None:
    """Run in a process of its own (``python -m mlx_model.pipelines.peers``): when its stdin is
    not closed within ``timeout`` seconds (``mx.distributed.init()`` holds the GIL while it waits:
    no thread of the waiting process can act), print the one-line error and end the process."""
    import select
    import signal
    import sys

    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if ready:
        return  # closed: init finished (or the parent is gone)
    silent = _silent_ranks(hostfile, me)
    print(f"error: the other processes did not answer within {timeout:g}s: {'; '.join(silent) or 'no hostfile'} "
          f"(this is rank {me or '?'}). Fix: {INIT_FIX}", file=sys.stderr, flush=True)
    os.kill(parent, signal.SIGTERM)


def open_group(timeout: float):
    """``mx.distributed.init()`` (a group of one without a launcher), waiting at most ``timeout``
    seconds for the other ranks: past that a watchdog process prints one line naming the ranks
    that did not answer and ends this process (SIGTERM: MLX's init cannot be interrupted from
    inside).  An error too when a launcher started several processes but MLX gave a group of
    another size."""
    import subprocess
    import sys

    import mlx.core as mx

    want = launcher_size()
    if not want or want == 1:
        return mx.distributed.init()
    dog = subprocess.Popen([sys.executable, "-m", "mlx_model.pipelines.peers", str(os.getpid()), str(timeout),
                            os.environ.get("MLX_HOSTFILE", ""), os.environ.get("MLX_RANK", "")],
                           stdin=subprocess.PIPE)
    try:
        group = mx.distributed.init()
    finally:
        dog.stdin.close()
        dog.wait()
    if group.size() != want:
        raise MobileOError(f"this process was started for a group of {want} processes but MLX's distributed "
                           f"init gave {group.size()}.",
                           fix="rerun with mlx.launch --verbose to see why the processes could not connect "
                           "(firewall, ports, hostfile IPs).")
    return group


class Peers:
    """The group's collectives, each waited for at most a given time (see the module's docstring)."""

    def __init__(self, group):
        self.group = group
        self.lost: str | None = None  # why the group was given up, once it was
        self._jobs: queue.Queue = queue.Queue()
        if group.size() > 1:
            threading.Thread(target=self._serve, name="mlx-collectives", daemon=True).start()

    @property
    def rank(self) -> int:
        return self.group.rank()

    @property
    def size(self) -> int:
        return self.group.size()

    def _serve(self) -> None:
        import mlx.core as mx

        stream = mx.new_stream(mx.cpu)  # a stream of this thread: a blocked collective blocks only it
        while True:
            fn, box, done = self._jobs.get()
            try:
                box.append((True, fn(stream)))
            except Exception as e:  # noqa: BLE001 - handed to the waiting caller
                box.append((False, e))
            done.set()

    def _call(self, fn, timeout: float, what: str):
        if self.lost:
            raise PeerLost(self.lost)
        box, done = [], threading.Event()
        self._jobs.put((fn, box, done))
        if not done.wait(timeout):
            self.lost = f"no answer from the other processes within {timeout:.0f}s at {what}"
            global _abandoned
            _abandoned = True
            raise PeerLost(self.lost)
        ok, value = box[0]
        if not ok:
            self.lost = f"{what}: {value}"
            raise PeerLost(self.lost)
        return value

    def gather_json(self, obj, timeout: float, what: str = "a gather") -> list:
        """Every rank's ``obj`` (JSON), in rank order, on every rank: an ``all_sum`` of the lengths
        and an ``all_gather`` of the padded bytes (a collective, so also a barrier)."""
        import mlx.core as mx
        import numpy as np

        data = json.dumps(obj).encode()
        n = self.size
        if n == 1:
            return [json.loads(data)]

        def gather(stream):
            lengths = np.zeros(n, np.int32)
            lengths[self.rank] = len(data)
            lengths = np.array(mx.distributed.all_sum(mx.array(lengths), group=self.group, stream=stream)).astype(int)
            buf = np.zeros((1, max(int(lengths.max()), 1)), np.uint8)
            buf[0, :len(data)] = np.frombuffer(data, np.uint8)
            rows = np.array(mx.distributed.all_gather(mx.array(buf), group=self.group, stream=stream))
            return [json.loads(rows[r, :lengths[r]].tobytes()) for r in range(n)]

        return self._call(gather, timeout, what)

    def barrier(self, timeout: float, what: str = "a barrier") -> None:
        import mlx.core as mx

        if self.size > 1:
            self._call(lambda stream: mx.eval(mx.distributed.all_sum(mx.array([1.0]), group=self.group,
                                                                     stream=stream)), timeout, what)


def end_process(code) -> None:
    """End the process now with exit status ``code`` (SystemExit's: None, an int or a message)
    when a collective was abandoned, after flushing; otherwise return.  The abandoned collective
    is still inside MLX on its thread, so a normal exit would run MLX's C++ destructors under it
    and abort ("terminate called without an active exception", SIGABRT) after a finished run."""
    import sys

    if not _abandoned:
        return
    if isinstance(code, str):
        print(code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


if __name__ == "__main__":
    import sys

    _watchdog(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] or None, sys.argv[4])
