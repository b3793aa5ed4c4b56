"""Callback delivery: off the checkout's thread, bounded, and recorded so tests can wait for it.

One dispatcher thread holds a heap of due sequences (so a `delayed` callback costs no thread while it
waits); a fixed pool of workers posts them. Steps of one sequence run on one worker in order, which is
what makes `duplicate` and `out_of_order` arrive in the documented order.
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from sandbox.outcomes import Step


class CallbackSender:
    def __init__(self, workers: int = 8, timeout: tuple[float, float] = (2.0, 5.0)):
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox-callback")
        self._local = threading.local()
        self._heap: list[tuple[float, int, str, str, list[Step]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._done = threading.Condition()  # separate from _cond so deliveries do not wake the dispatcher
        self._sent: list[dict[str, Any]] = []
        self._dispatcher = threading.Thread(target=self._dispatch, name="sandbox-callback-dispatch", daemon=True)
        self._dispatcher.start()

    def schedule(self, url: str, transaction_id: str, steps: list[Step]) -> None:
        if not steps:
            return
        with self._cond:
            heapq.heappush(
                self._heap, (time.monotonic() + steps[0].wait_seconds, next(self._seq), url, transaction_id, steps)
            )
            self._cond.notify_all()

    def _dispatch(self) -> None:
        with self._cond:
            while not self._stopping:
                if not self._heap:
                    self._cond.wait()
                    continue
                due = self._heap[0][0] - time.monotonic()
                if due > 0:
                    self._cond.wait(due)
                    continue
                _, _, url, transaction_id, steps = heapq.heappop(self._heap)
                self._pool.submit(self._deliver, url, transaction_id, steps)

    def _deliver(self, url: str, transaction_id: str, steps: list[Step]) -> None:
        for index, step in enumerate(steps):
            if index and step.wait_seconds > 0:
                time.sleep(step.wait_seconds)
            if self._stopping:
                return
            self._post(url, transaction_id, step.payload)

    def _post(self, url: str, transaction_id: str, payload: dict[str, Any]) -> None:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        record: dict[str, Any] = {
            "transaction_id": transaction_id,
            "url": url,
            "payload": payload,
            "http_status": None,
            "error": None,
        }
        try:
            response = session.post(
                url,
                data=json.dumps(payload).encode(),
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
            )
            record["http_status"] = response.status_code
        except requests.RequestException as exc:
            record["error"] = type(exc).__name__
        record["sent_at"] = time.time()
        with self._done:
            self._sent.append(record)
            self._done.notify_all()

    def sent(self) -> list[dict[str, Any]]:
        with self._done:
            return list(self._sent)

    def count(self) -> int:
        with self._done:
            return len(self._sent)

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def wait_for(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """Block until at least `count` deliveries were attempted or `timeout` passed; returns all so far."""
        deadline = time.monotonic() + timeout
        with self._done:
            while len(self._sent) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._done.wait(remaining)
            return list(self._sent)

    def clear(self) -> None:
        with self._done:
            self._sent.clear()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._heap.clear()
            self._cond.notify_all()
        self._dispatcher.join(timeout=2)
        self._pool.shutdown(wait=True, cancel_futures=True)
