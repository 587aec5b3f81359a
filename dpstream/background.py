"""Pipeline stages on their own threads, bounded queues between.

A file run decodes, marks key frames (CenterFace runs there), finds and tracks faces, replaces
them and encodes on five threads. PyAV, MediaPipe, LiteRT, ONNX Runtime, OpenCV and the Numba
kernels do their work without holding the GIL, so on two cores the stages overlap. Errors
raised in a background thread are raised again in the caller.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

Item = TypeVar("Item")

_END = object()


class Prefetch(Generic[Item]):
    """Iterates ``items`` in a background thread, at most ``size`` items ahead of the reader."""

    def __init__(self, items: Iterable[Item], size: int = 4, name: str = "dpstream-read"):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), name=name, daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[Item]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def close(self) -> None:
        """Stop reading ahead and wait for the thread to finish."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def _run(self, items: Iterable[Item]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
        except BaseException as error:  # handed to the reader
            self._put(_Failure(error))
            return
        self._put(_END)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False


class BackgroundCalls:
    """Runs calls in order on one background thread, at most ``size`` waiting; ``close`` waits
    for all of them. The first error is raised by the next ``submit`` or by ``close``."""

    def __init__(self, size: int = 4):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dpstream-write", daemon=True)
        self._thread.start()

    def submit(self, call: Callable[..., object], *args: object) -> None:
        self._raise_pending()
        self._queue.put((call, args))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._raise_pending()

    def _run(self) -> None:
        while (task := self._queue.get()) is not None:
            if self._error is None:
                call, args = task
                try:
                    call(*args)
                except BaseException as error:
                    self._error = error

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


@contextmanager
def signals_routed_to(handler: Callable) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``handler`` meanwhile (possible only in the main thread; elsewhere
    nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error
