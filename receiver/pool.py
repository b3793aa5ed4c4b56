"""A small bounded pool of daemon threads for the portal endpoints' AzamPay calls.

Starlette's shared threadpool also serves /healthz, /metrics and the status endpoint's database reads:
60 slow AzamPay calls there made /healthz wait seconds. This pool has a fixed number of threads, no
waiting line (a full pool refuses at once, the caller answers without waiting), and daemon threads, so
a hung AzamPay call never holds up the receiver's shutdown (concurrent.futures joins its threads at exit).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_STOP = object()


class BoundedPool:
    def __init__(self, workers: int, name: str):
        self.workers = max(1, int(workers))
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._busy = 0
        self._threads: list[threading.Thread] = []

    @property
    def busy(self) -> int:
        return self._busy

    def try_submit(self, fn: Callable[..., Any], *args: Any) -> Future | None:
        """A Future of fn(*args), or None when every thread is busy (nothing is queued)."""
        with self._lock:
            if self._busy >= self.workers:
                return None
            self._busy += 1
            if len(self._threads) < self.workers:  # threads start on first use: most receivers never call AzamPay
                thread = threading.Thread(target=self._run, name=f"{self.name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        future: Future = Future()
        self._queue.put((future, fn, args))
        return future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            future, fn, args = item
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except BaseException as exc:  # handed to whoever awaits the future
                        future.set_exception(exc)
            finally:
                with self._lock:
                    self._busy -= 1

    def close(self) -> None:
        """Let idle threads end; busy ones end after their call (they are daemons: exit never waits)."""
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(_STOP)
