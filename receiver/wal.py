"""SQLite WAL checkpoints off the receiver's commit path.

By default the commit that takes SQLite's write-ahead log past 1,000 pages also copies the log into the
database file and fsyncs it before it returns. In the receiver that commit is a group commit, so every
callback in the group waited for the copy, several times a second under load (the receiver's tail
latency: bench/RESULTS.md).
The receiver's engine turns that off (make_engine(sqlite_autocheckpoint=False)) and this thread copies
the log on a connection of its own, beside the writer: in WAL mode a checkpoint and a write transaction
run at the same time. Durability is unchanged: a commit is durable once its frames are fsynced in the
log, which the writer still does.

SQLite starts the log over from its beginning only at a write transaction that begins when every frame
has been copied and no reader is still reading from the log. Under steady load the writer begins its
next transaction as soon as one commits, so a copy made on this thread never lands between the two,
and the log would grow without bound. So when a round leaves a
log of RESTART_FRAMES or more, `due` is set: the writer thread, between two groups, copies the last
few frames itself (`catch_up`), and its next transaction starts the log over. A lock keeps a round and
a catch-up apart (SQLite would answer the second "busy"); the writer never waits for it: a round in
progress puts its catch-up off to the next group.

Another process's writer (serve --workers 2) can still keep the log from starting over; past CAP_FRAMES
a round ends with a RESTART checkpoint, which holds every writer back while it waits for the other
writer's transaction and for readers to leave the log, then copies it all. It waits at most
RESTART_WAIT_MS (not the connection's busy timeout, 10 s by default): a reader that stays in the log
(a long report, say) would otherwise hold the callbacks back for that long at every round. A RESTART
that could not finish is not tried again for RESTART_BACKOFF_SECONDS; meanwhile the log grows, as it
would under SQLite's own autocheckpoint with that reader open.
"""

from __future__ import annotations

import threading
import time

from loguru import logger
from sqlalchemy.engine import Engine

from receiver.metrics import WalCounters, process_counters

INTERVAL_SECONDS = 0.25
PASSES_PER_ROUND = 4
RESTART_FRAMES = 1_000  # 4 MB of 4 KiB pages: the log SQLite's own autocheckpoint lets grow
CAP_FRAMES = 65_536  # 256 MB
RESTART_WAIT_MS = 250
RESTART_BACKOFF_SECONDS = 60.0
CATCH_UP_WAIT_SECONDS = 2.0  # a writer with nothing to write never catches up: the next round copies instead
ERROR_LOG_INTERVAL_SECONDS = 60.0


class WalCheckpointer:
    def __init__(
        self,
        engine: Engine,
        interval_seconds: float = INTERVAL_SECONDS,
        passes: int = PASSES_PER_ROUND,
        restart_frames: int = RESTART_FRAMES,
        cap_frames: int = CAP_FRAMES,
    ):
        self.engine = engine
        self.interval_seconds = interval_seconds
        self.passes = max(1, passes)
        self.restart_frames = restart_frames
        self.cap_frames = cap_frames
        self.due = False  # a round left frames to copy; the writer calls catch_up() between two groups
        self.rounds = 0
        self.catch_ups = 0
        self.restarts = 0
        self.restarts_given_up = 0
        self.failures = 0
        self.counters = process_counters(WalCounters)  # /metrics, summed over every worker
        self._copying = threading.Lock()
        self._due_since = 0.0
        self._no_restart_until = 0.0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error_logged = float("-inf")

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name="azamrecon-wal-checkpoint", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """End the thread after one last round, so a stopped receiver leaves its log copied."""
        thread = self._thread
        if thread is None:
            return
        self._wake.set()
        thread.join(timeout)
        if not thread.is_alive():  # still copying: start() must not run a second thread beside it
            self._thread = None

    def checkpoint(self) -> tuple[int, int]:
        """One round: (frames in the log, frames copied) after its last pass; equal when all were copied.
        Another process's checkpoint in progress (SQLite answers busy) ends the round: that one copies."""
        with self._copying:
            log, copied = self._passes(self.passes)
            if log >= self.cap_frames and time.monotonic() >= self._no_restart_until:
                log, copied = self._restart()
            self.rounds += 1
            self.counters.rounds.inc()
            if log >= self.restart_frames and not self.due:
                self.due, self._due_since = True, time.monotonic()
        return log, copied

    def catch_up(self) -> None:
        """On the writer's thread, between two groups, when `due`: copy what is left, so the writer's next
        commit starts the log over. Returns at once when a round is copying. Never raises."""
        if not self._copying.acquire(blocking=False):
            return
        try:
            log, copied = self._passes(1)
            # -1, -1: another process is copying; frames left: a reader still needs them. Either way stay due.
            if 0 <= log <= copied:
                self.due = False
                self.catch_ups += 1
                self.counters.catch_ups.inc()
        except Exception as exc:
            self._failed(exc)
        finally:
            self._copying.release()

    def _passes(self, passes: int) -> tuple[int, int]:
        log = copied = 0
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            for _ in range(passes):
                busy, log, copied = cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if busy or copied >= log:
                    break
            cursor.close()
        finally:
            connection.close()
        return log, copied

    def _restart(self) -> tuple[int, int]:
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            (configured_ms,) = cursor.execute("PRAGMA busy_timeout").fetchone()
            cursor.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
            try:
                busy, log, copied = cursor.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            finally:
                cursor.execute(f"PRAGMA busy_timeout={int(configured_ms)}")  # the connection goes back to the pool
            cursor.close()
        finally:
            connection.close()
        if busy:
            self.restarts_given_up += 1
            self._no_restart_until = time.monotonic() + RESTART_BACKOFF_SECONDS
        else:
            self.restarts += 1
        return log, copied

    def _run(self) -> None:
        while True:
            stopping = self._wake.wait(self.interval_seconds)
            if self.due and not stopping and time.monotonic() - self._due_since < CATCH_UP_WAIT_SECONDS:
                continue  # the writer copies the rest after its next group; a round now would only delay that
            try:
                self.checkpoint()
            except Exception as exc:
                self._failed(exc)
            if stopping:
                return

    def _failed(self, exc: Exception) -> None:
        """Commits stay durable in the log whatever happens here; only its size grows. One warning a minute."""
        self.failures += 1
        self.counters.failures.inc()
        now = time.monotonic()
        if now - self._last_error_logged >= ERROR_LOG_INTERVAL_SECONDS:
            self._last_error_logged = now
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            logger.warning(
                "SQLite WAL checkpoint failed ({} so far): {}: {}", self.failures, type(exc).__name__, first_line
            )
