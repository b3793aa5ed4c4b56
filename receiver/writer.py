"""Group commit: one writer thread owns the receiver's database writes.

Request handlers build a row and `await writer.submit(...)`. The writer takes everything queued (up to
receiver.group_commit_max_batch rows), runs ONE transaction (resolve_claims lookup + executemany
append), commits, and only then resolves every request's future on its event loop. While one commit
is being fsynced the next group is queueing, so throughput grows with concurrency.

When the database fails, every row of the failed group is written to the disk spool (fsync) and
answered SPOOLED (503); if the spool cannot be written either, FAILED / NO_SPACE (500 / 507).

On SQLite a receiver.wal.WalCheckpointer copies the write-ahead log on a thread of its own; between two
groups, when it asks, the writer copies the last few frames so that its next group starts the log over.
"""

from __future__ import annotations

import asyncio
import errno
import queue
import threading
import time
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, NamedTuple

from loguru import logger

from pipeline.db import transaction
from pipeline.errors import StoreError, StoreUnavailable
from pipeline.logs import payments
from pipeline.redact import log_value
from pipeline.store.events import (
    Claim,
    already_appended,
    append_events,
    resolve_claims,
)
from pipeline.store.spool import spool_record
from receiver.metrics import ReceiverCounters, process_counters
from receiver.spool import Spool
from receiver.wal import WalCheckpointer


class Written(StrEnum):
    """What became of a submitted row."""

    KNOWN = "known"  # committed; the callback names a known donation
    UNKNOWN = "unknown"  # committed; no donation matches
    STORED = "stored"  # committed; no lookup was asked for
    SPOOLED = "spooled"  # database failed; the row is in the disk spool
    FAILED = "failed"  # database and spool both failed
    NO_SPACE = "no_space"  # ... and the spool failed for lack of space


KNOWN, UNKNOWN, STORED, SPOOLED, FAILED, NO_SPACE = Written

_STOP = object()
QUICK_FAILURE_SECONDS = 1.0  # a group failing faster than this is retried row by row; slower, it is spooled


class Result(NamedTuple):
    outcome: Written


class Pending:
    """One queued row and the future its request awaits."""

    __slots__ = ("row", "keys", "typed", "future", "loop", "outcome")

    def __init__(self, row: dict[str, Any], keys: Claim | None, typed: bool, future, loop):
        self.row = row
        self.keys = keys
        self.typed = typed
        self.future = future
        self.loop = loop
        self.outcome: str | None = None


def _resolve(items: Sequence[Pending]) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_result(Result(item.outcome))


class GroupCommitWriter:
    def __init__(
        self,
        engine,
        spool: Spool,
        max_batch: int = 256,
        outage_backoff_seconds: float = 0.5,
        checkpointer: WalCheckpointer | None = None,
        counters: ReceiverCounters | None = None,
        more_donations=None,
    ):
        self.engine = engine
        self.more_donations = more_donations  # portal mode: pipeline.store.portal.PortalLookup
        self.spool = spool
        self.checkpointer = checkpointer
        self.max_batch = max(1, int(max_batch))
        self.outage_backoff_seconds = outage_backoff_seconds
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._down_until = 0.0
        self._stopped = False
        # statistics: these for tests and benchmarks, `counters` for /metrics (summed over every worker)
        self.counters = counters or process_counters(ReceiverCounters)
        self.batches = 0
        self.rows_committed = 0
        self.rows_spooled = 0
        self.largest_batch = 0

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="azamrecon-group-commit", daemon=True)
        self._thread.start()
        if self.checkpointer:
            self.checkpointer.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then end the thread."""
        self._stopped = True
        thread = self._thread
        if thread is None:
            return
        self._queue.put(_STOP)
        thread.join(timeout)
        self._thread = None
        if self.checkpointer:
            self.checkpointer.stop(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- request side ---------------------------------------------------------------------------

    async def submit(self, row: dict[str, Any], keys: Claim | None = None, typed: bool = True) -> Result:
        """Queue a row; return its Result once it is committed (or spooled)."""
        loop = asyncio.get_running_loop()
        item = Pending(row, keys, typed, loop.create_future(), loop)
        if self._stopped:  # shutting down: process it alone, off the loop (rows queued before start() wait for it)
            await loop.run_in_executor(None, self._process, [item])
            return Result(item.outcome)
        self._queue.put(item)
        return await item.future

    # --- writer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        get, get_nowait, limit, checkpointer = (
            self._queue.get,
            self._queue.get_nowait,
            self.max_batch,
            self.checkpointer,
        )
        stopping = False
        while not stopping:
            first = get()
            if first is _STOP:
                break
            batch = [first]
            while len(batch) < limit:
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            try:
                self._process(batch)
            except BaseException:  # never leave a request hanging
                logger.exception("group-commit writer failed on a batch of {}", len(batch))
                for item in batch:
                    item.outcome = item.outcome or FAILED
            self._answer(batch)
            if checkpointer is not None and checkpointer.due:
                checkpointer.catch_up()
        # anything queued after the stop marker is still answered
        rest = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                rest.append(item)
        if rest:
            self._process(rest)
            self._answer(rest)

    def _answer(self, batch: Sequence[Pending]) -> None:
        by_loop: dict[Any, list[Pending]] = {}
        for item in batch:
            by_loop.setdefault(item.loop, []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _process(self, batch: list[Pending], after_failure: bool = False) -> None:
        """Commit the batch in one transaction; on failure spool it. Sets each item's outcome."""
        if time.monotonic() < self._down_until:
            self._spool(batch, "database unavailable (recent failure, not retried yet)")
            return
        started = time.monotonic()
        try:
            self._commit(batch, after_failure)
        except StoreUnavailable as exc:
            self._down_until = time.monotonic() + self.outage_backoff_seconds
            self._spool(batch, str(exc))
        except StoreError as exc:
            # one bad row must not fail its neighbours: retry them one by one. A bad row fails at once; a
            # failure that came after a wait (SQLite's lock held past busy_timeout) would wait again per row,
            # holding the group's callbacks n times longer than nginx waits: spool those at once
            if len(batch) > 1 and time.monotonic() - started < QUICK_FAILURE_SECONDS:
                for item in batch:
                    self._process([item], after_failure=True)
                return
            self._spool(batch, str(exc))
        except Exception as exc:  # a bug: keep the request anyway
            self._spool(batch, f"{type(exc).__name__}: {exc}")
        else:
            if self._down_until:
                self._down_until = 0.0

    def _commit(self, batch: list[Pending], after_failure: bool = False) -> None:
        """after_failure: the batch's first COMMIT raised, yet may have happened; rows already in the log
        are not appended again (same body, same received_at)."""
        lookups = [item for item in batch if item.keys is not None]
        with transaction(self.engine, immediate=True) as session:
            resolutions = (
                resolve_claims(session, [item.keys for item in lookups], self.more_donations) if lookups else []
            )
            rows = [item.row for item in batch]
            if after_failure:
                present = already_appended(session, rows)
                rows = [row for row in rows if (row["body_sha256"], row["received_at"]) not in present]
            append_events(session, rows)
        # outcomes only once the COMMIT is done: an outcome set inside a transaction that then failed would
        # survive an error on the spool path and answer 200 for a callback stored nowhere
        for item, resolution in zip(lookups, resolutions, strict=True):
            item.outcome = KNOWN if resolution.donation_id is not None else UNKNOWN
        for item in batch:
            if item.keys is None:
                item.outcome = STORED
        self.batches += 1
        self.rows_committed += len(batch)
        self.counters.batches.inc()
        self.counters.rows_committed.inc(len(batch))
        if len(batch) > self.largest_batch:
            self.largest_batch = len(batch)

    def _spool(self, batch: list[Pending], reason: str) -> None:
        try:
            path = self.spool.write([spool_record(item.row, item.typed) for item in batch])
        except OSError as exc:
            outcome = NO_SPACE if exc.errno in (errno.ENOSPC, errno.EDQUOT) else FAILED
            for item in batch:
                item.outcome = outcome
            payments.error(
                "Error processing Azam Pay callback: {} and the spool could not be written ({}: {}); {} callback(s) not stored",
                reason,
                type(exc).__name__,
                exc.strerror or exc,
                len(batch),
            )
            return
        for item in batch:
            item.outcome = SPOOLED
        self.rows_spooled += len(batch)
        self.counters.rows_spooled.inc(len(batch))
        payments.error(
            "Error processing Azam Pay callback: {}; {} callback(s) spooled to {}", log_value(reason), len(batch), path
        )
