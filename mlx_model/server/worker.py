"""The one thread that owns the model: every MLX call of the server runs here, one request at a
time, in arrival order, from a bounded queue.

A request becomes a :class:`Job` (a function of the model and the job).  The event loop
submits it (a full queue raises :class:`QueueFull`: the server answers 503) and awaits its
events: a streaming job emits pieces as it goes, every job ends with a result or an error.
A job whose client went away is marked cancelled: it is dropped if it has not started, and a
running one stops at its next piece (:meth:`Job.check`).

MLX arrays made on this thread are released on this thread: :meth:`Worker.stop` drops the
model and the caches before the thread ends (an MLX array made from random numbers on one
thread and destroyed at interpreter exit aborts the process).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any, Callable

__all__ = ["Worker", "Job", "QueueFull", "Cancelled"]

_STOP = object()


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy (queue full); retry in {retry_after} s")
        self.retry_after = retry_after


class Cancelled(Exception):
    """Raised inside a job whose client has gone."""


def detached(e: Exception) -> Exception:
    """``e`` without its traceback (whose frames hold the job's MLX arrays, which must be freed
    here, on the worker), the formatted traceback kept as ``e.worker_traceback`` for the log."""
    import traceback

    e.worker_traceback = "".join(traceback.format_exception(e))
    e.__traceback__ = e.__context__ = e.__cause__ = None
    return e


class Job:
    """``fn(state, job)`` runs on the worker; ``state`` is what the worker's loader returned.
    Pieces go out with :meth:`emit`; the return value or the exception ends the job."""

    def __init__(self, fn: Callable[[Any, "Job"], Any], loop: asyncio.AbstractEventLoop):
        self.fn = fn
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()

    def emit(self, kind: str, value=None) -> None:
        """Hand ``(kind, value)`` to the awaiting request (thread-safe); after the server's loop
        has closed (shutdown) there is nobody to tell, and the job stops at its next check."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed
            self.cancel()

    def check(self) -> None:
        """Stop here when the client has gone."""
        if self.cancelled.is_set():
            raise Cancelled()

    def cancel(self) -> None:
        self.cancelled.set()


class Worker:
    """One thread, ``max_queue`` waiting jobs at most (the running one not counted)."""

    def __init__(self, loader: Callable[[], Any], max_queue: int = 8):
        self.loader = loader
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.max_queue = max_queue
        self.state = None
        self.current: Job | None = None  # the job running now
        self.stats = {"done": 0, "failed": 0, "cancelled": 0, "rejected": 0}
        self._seconds = 0.0  # all finished jobs together, for Retry-After
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="mobileo-worker", daemon=True)

    # ------------------------------------------------------------------ lifetime
    def start(self) -> None:
        """Start the thread and wait for the model; a loading error is raised here."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel every job (waiting or running), then end the thread after the running one."""
        if not self._thread.is_alive():
            return
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                job.cancel()
                self.stats["cancelled"] += 1
        if self.current is not None:
            self.current.cancel()
        self.queue.put(_STOP)
        self._thread.join(timeout)

    def _main(self) -> None:
        try:
            self.state = self.loader()
        except BaseException as e:  # handed to start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        while True:
            job = self.queue.get()
            if job is _STOP:
                break
            self._run(job)
        self.state = None
        import gc

        import mlx.core as mx

        gc.collect()
        mx.clear_cache()

    def _run(self, job: Job) -> None:
        if job.cancelled.is_set():
            self.stats["cancelled"] += 1
            return
        self.current = job
        t = time.perf_counter()
        try:
            result = job.fn(self.state, job)
        except Cancelled:
            self.stats["cancelled"] += 1
        except Exception as e:  # the request turns it into an error answer
            self.stats["failed"] += 1
            job.emit("error", detached(e))
        else:
            self.stats["done"] += 1
            job.emit("result", result)
        finally:
            self.current = None
            self._seconds += time.perf_counter() - t

    # ------------------------------------------------------------------ requests
    def submit(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            self.stats["rejected"] += 1
            raise QueueFull(self.retry_after()) from None

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the mean job time times the jobs ahead."""
        finished = self.stats["done"] + self.stats["failed"] + self.stats["cancelled"]
        mean = self._seconds / finished if finished else 1.0
        return max(1, round(mean * (self.queue.qsize() + 1)))

    def waiting(self) -> int:
        return self.queue.qsize()
