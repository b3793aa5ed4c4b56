"""The receiver's log sinks: file lines written in batches by a background thread, and the per-callback
payments line redacted and formatted on that thread instead of the event loop's.

configure_batched_logging() is pipeline.logs.configure_logging with these sinks (the receiver's workers
call it); log_received_callback() writes the line; flush_logs() writes what is pending (at shutdown).
"""

from __future__ import annotations

import sys
import threading
import time
import weakref

from loguru import logger

from pipeline import loguru_adapter
from pipeline.logs import (
    APP_LOG,
    PAYMENTS_LOG,
    LogStamp,
    configure_logging,
    line_prefix,
    payments_redacted,
    scrub_secrets,
)
from pipeline.redact import redact_body
from pipeline.sections import LoggingConfig


def configure_batched_logging(
    config: LoggingConfig, component: str = "app", secrets: tuple[str, ...] = (), stderr_level: str | None = "WARNING"
) -> None:
    """configure_logging, with file lines written in batches at most 0.1 s late (BatchedFileSink) instead of
    one write() per line per file, and the received-callback line rendered on the sinks' threads."""
    global _received_line
    _received_line = None
    sinks = configure_logging(config, component, secrets, stderr_level, file_sink=BatchedFileSink)
    info = logger.level("INFO").no
    if not stderr_level or logger.level(stderr_level).no > info:
        # exactly the files loguru would send a payments INFO line to
        payments_only = logger.level(config.level).no > info
        files = (PAYMENTS_LOG,) if payments_only else (PAYMENTS_LOG, APP_LOG)
        _received_line = _ReceivedLine([sinks[name] for name in files], component, secrets)


class _Deferred:
    """A `Received Azam Pay callback` line whose redaction and formatting are left to the batched sinks'
    writer threads: it renders (once, whichever sink gets there first) to the very text loguru would
    have written through _FORMAT and the scrub patcher."""

    __slots__ = ("body", "decoded", "moment", "owner", "text")

    def __init__(self, body: bytes, decoded, moment: float, owner: _ReceivedLine):
        self.body = body
        self.decoded = decoded
        self.moment = moment
        self.owner = owner
        self.text = None

    def render_safely(self) -> str:
        """The line, or a line saying it could not be rendered: one bad body never drops its batch."""
        try:
            return self.render()
        except Exception as exc:  # noqa: BLE001 - the other lines of the batch must still be written
            stamp = self.owner.stamp_of(self.moment)
            return f"{stamp}{self.owner.prefix}Received Azam Pay callback: [body not rendered: {type(exc).__name__}]\n"

    def render(self) -> str:
        text = self.text
        if text is None:
            with self.owner.rendering:  # two sinks' threads: the second must not find the body already dropped
                text = self.text
                if text is None:
                    text = self.text = self.owner.render(self)
                    self.body = self.decoded = None
        return text


class _ReceivedLine:
    """The receiver's per-callback payments line without loguru on the request path: the request hands
    the raw body (and its decoded JSON) to the batched file sinks, whose threads redact and format it.

    Valid only while loguru's handlers are the ones configure_batched_logging() installed (anything added or
    removed since, e.g. a test's own sink, and log_received_callback goes through loguru again)."""

    def __init__(self, sinks, component: str, secrets: tuple[str, ...]):
        self.sinks = tuple(sinks)
        self.handlers = loguru_adapter.handlers_token()
        self.prefix = line_prefix("INFO", component)
        self.secrets = secrets
        self.stamp = LogStamp()
        self.lock = threading.Lock()
        self.rendering = threading.Lock()

    def active(self) -> bool:
        return loguru_adapter.handlers_unchanged(self.handlers)

    def render(self, item: _Deferred) -> str:
        # as the scrub patcher does for text already redacted
        message = scrub_secrets(
            "Received Azam Pay callback: " + redact_body(item.body, decoded=item.decoded), self.secrets
        )
        return self.stamp_of(item.moment) + self.prefix + message + "\n"

    def stamp_of(self, moment: float) -> str:
        with self.lock:  # the stamp's cache is shared by the sinks' threads
            return self.stamp(moment)

    def submit(self, body: bytes, decoded) -> None:
        item = _Deferred(body, decoded, time.time(), self)
        size = len(body) + 96
        for sink in self.sinks:
            sink.write_deferred(item, size)


_received_line: _ReceivedLine | None = None


def log_received_callback(body: bytes, decoded=None) -> None:
    """payments: `Received Azam Pay callback: {redacted body}`. With the receiver's batched logging the
    redaction and formatting happen on the log writer threads, not on the caller's (event loop) thread;
    otherwise (and whenever loguru's handlers changed since configure_batched_logging) it is an ordinary
    loguru line."""
    fast = _received_line
    if fast is not None and fast.active():
        fast.submit(body, decoded)
    else:
        payments_redacted.info("Received Azam Pay callback: {}", redact_body(body, decoded=decoded))


class BatchedFileSink:
    """A loguru file sink (loguru's own FileSink: same rotation, retention, encoding) written in batches of
    whole lines: at most `interval` seconds (or `max_pending` characters) after the record, by a
    background thread, instead of one write() system call per line per file.

    Used by the receiver only, where every callback logs a line to two files. Every write is whole
    lines, so files shared by several `serve` workers (O_APPEND) never get a line split. flush_logs()
    (the receiver's shutdown) and stop() (logger.remove) write what is pending."""

    def __init__(self, path, interval: float = 0.1, max_pending: int = 64 * 1024, **file_options):
        self._file = loguru_adapter.file_sink(str(path), **file_options)
        self._pending: list = []  # lines (str) and _Deferred lines, in order
        self._size = 0
        self._max = max_pending
        self._lock = threading.Lock()  # guards _pending and _size (held only to append or swap)
        self._io_lock = threading.Lock()  # one flush at a time, so batches reach the file in order
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._failed = False
        _BATCHED.add(self)
        self._thread = threading.Thread(target=self._run, args=(interval,), name="azamrecon-log-flush", daemon=True)
        self._thread.start()

    def write(self, message) -> None:
        self._append(message, len(message))

    def write_deferred(self, item: _Deferred, size: int) -> None:
        """A line rendered later, on the writer thread (see log_received_callback)."""
        self._append(item, size)

    def _append(self, message, size: int) -> None:
        with self._lock:
            self._pending.append(message)
            self._size += size
            pending = self._size
        if pending >= self._max:
            if pending >= 16 * self._max:  # the writer thread is not keeping up: write here (back pressure)
                self.flush_pending()
            else:
                self._wake.set()

    def flush_pending(self) -> None:
        with self._io_lock:
            with self._lock:
                if not self._pending:
                    return
                pending = self._pending
                self._pending = []
                self._size = 0
            self._write(pending)

    def _write(self, pending: list) -> None:
        try:
            data = "".join([line.render_safely() if line.__class__ is _Deferred else line for line in pending])
            self._file.write(data)
        except Exception as exc:  # a full disk must not take the receiver down; say it once
            if not self._failed:
                self._failed = True
                print(f"error: cannot write log file: {type(exc).__name__}: {exc}", file=sys.stderr)

    def _run(self, interval: float) -> None:
        while not self._stopped.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stopped.is_set():
                break
            self.flush_pending()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()
        self.flush_pending()
        with self._io_lock:
            self._file.stop()
        _BATCHED.discard(self)


_BATCHED: weakref.WeakSet[BatchedFileSink] = weakref.WeakSet()


def flush_logs() -> None:
    """Write every batched log line now (the receiver calls this when it stops)."""
    for sink in list(_BATCHED):
        sink.flush_pending()
