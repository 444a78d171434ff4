"""The one thread that owns the model: every MLX call of the server runs here, one request at a
time, in arrival order, from a bounded queue.

A request becomes a :class:`Job` (a function of the model and the job).  The event loop
submits it (a full queue raises :class:`QueueFull`: the server answers 503) and awaits its
events: a streaming job emits pieces as it goes, every job ends with a result or an error.
A job whose client went away is marked cancelled: it is dropped if it has not started, and a
running one stops at its next piece (:meth:`Job.check`).

MLX arrays made on this thread are released on this thread: :meth:`Worker.stop` drops the
model and the caches, and then the thread *parks* (waits forever) instead of ending.  Why:
MLX's Python module keeps thread-local C++ state whose destructor takes the GIL when its
thread ends.  A thread that ends while the main thread finalizes the interpreter is made to
exit inside that destructor, which is ``noexcept``: "terminate called without an active
exception", exit 134 (26 of 42 Ctrl-C runs before this; gdb: ``__call_tls_dtors`` ->
``PyGILState_Ensure`` -> ``pthread_exit``).  A parked daemon thread runs no destructor; the
process ends around it.
"""

from __future__ import annotations

import asyncio
import collections
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
    Pieces go out with :meth:`emit`; the return value or the exception ends the job.
    ``kind`` ("chat", "image"): Retry-After is estimated from the durations of each kind."""

    def __init__(self, fn: Callable[[Any, "Job"], Any], loop: asyncio.AbstractEventLoop, kind: str = "job"):
        self.fn = fn
        self.kind = kind
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
        # invalid: jobs that ended in a bad-input error (answered 4xx: the server's client_errors
        # count them too), not counted as failures; rejected: refused with a full queue (503)
        self.stats = {"done": 0, "failed": 0, "invalid": 0, "cancelled": 0, "rejected": 0}
        self.durations: dict[str, collections.deque] = {}  # kind -> the last seconds of finished jobs
        self._started_at = 0.0  # when the running job began
        self._ready = threading.Event()
        self._stopped = threading.Event()  # the model is released; the thread is parked
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="mobileo-worker", daemon=True)

    # ------------------------------------------------------------------ lifetime
    def start(self) -> None:
        """Start the thread and wait for the model; a loading error is raised here."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def cancel_all(self) -> list[Job]:
        """Cancel every job, waiting or running; the waiting ones are taken off the queue."""
        jobs = []
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                job.cancel()
                jobs.append(job)
                self.stats["cancelled"] += 1
        if self.current is not None:
            self.current.cancel()
            jobs.append(self.current)
        return jobs

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel every job (waiting or running), then release the model after the running one
        stops (at its next check) and park the thread (see the module's docstring)."""
        if not self._thread.is_alive() or self.stopped:
            return
        self.cancel_all()
        self.queue.put(_STOP)
        self._stopped.wait(timeout)

    def _main(self) -> None:
        try:
            self.state = self.loader()
        except BaseException as e:  # handed to start()
            self._error = e
            self._ready.set()
            self._stopped.set()
            threading.Event().wait()  # park (the loader may have made MLX state on this thread)
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
        self._stopped.set()
        threading.Event().wait()  # park: never return (see the module's docstring)

    def _run(self, job: Job) -> None:
        if job.cancelled.is_set():
            self.stats["cancelled"] += 1
            return
        from weights.core.errors import MobileOError

        self.current = job
        t = self._started_at = time.perf_counter()
        try:
            result = job.fn(self.state, job)
        except Cancelled:
            self.stats["cancelled"] += 1
        except Exception as e:  # the request turns it into an error answer
            self.stats["invalid" if isinstance(e, MobileOError) else "failed"] += 1
            job.emit("error", detached(e))
        else:
            self.stats["done"] += 1
            job.emit("result", result)
        finally:
            self.current = None
            self.durations.setdefault(job.kind, collections.deque(maxlen=20)).append(time.perf_counter() - t)

    # ------------------------------------------------------------------ requests
    def submit(self, job: Job) -> None:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            self.stats["rejected"] += 1
            raise QueueFull(self.retry_after()) from None

    def expected_seconds(self, kind: str) -> float:
        """The mean of the last durations of jobs of ``kind`` (1 s before any has run)."""
        seen = self.durations.get(kind)
        return sum(seen) / len(seen) if seen else 1.0

    def retry_after(self) -> int:
        """Seconds until a place in the queue is likely free: what is left of the running job
        (from the measured durations of its kind; a place frees when it ends), or the first
        waiting job's expected time when none runs yet."""
        current, waiting = self.current, [j for j in list(self.queue.queue)[:1] if j is not _STOP]
        if current is not None:
            left = self.expected_seconds(current.kind) - (time.perf_counter() - self._started_at)
        else:
            left = sum(self.expected_seconds(j.kind) for j in waiting)
        return max(1, round(left))

    def waiting(self) -> int:
        return self.queue.qsize()
