"""Logging. Library code only emits through loguru; sinks are configured here, and only entry points call it.

logs/payments.log  payment lines (the webhook guide's greps run against this file)
logs/errors.log    every ERROR and above
logs/app.log       everything
Every record's message passes through pipeline.redact before any sink sees it. Files are created 0640
(the payment lines hold donors' phone numbers: docs/privacy.md) and start anew each UTC day as well as
at the size limit, so a file's age is the age of its newest line and `privacy retain` can delete by it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from pathlib import Path

from loguru import logger

from pipeline.config import Config, LoggingConfig
from pipeline.errors import ConfigError
from pipeline.redact import REDACTED, escape_controls, redact_body, redact_text

# Library code logs payment lines through this; the sink filter routes them to payments.log.
payments = logger.bind(channel="payments")
# The same channel for text already redacted by pipeline.redact (the patcher then only scrubs literal secrets).
payments_redacted = payments.bind(redacted=True)

# {extra[utc]} is the record's time as YYYY-MM-DD HH:mm:ss.SSS in UTC, rendered once per record by the
# patcher (loguru's {time:...!UTC} would render it again for every file the record goes to).
_FORMAT = "{extra[utc]} | {level:<8} | {extra[component]} | {message}"
# loguru's diagnose mode prints every local variable of a traceback: a request's headers (Bearer
# token, X-API-KEY) would reach errors.log untouched by the message scrubber. Plain tracebacks only.
_SAFE_TRACEBACKS = {"diagnose": False, "backtrace": False}


class _UtcStamp:
    """YYYY-MM-DD HH:mm:ss.SSS (UTC) of a record time; the part up to the second is cached."""

    __slots__ = ("_second", "_prefix")

    def __init__(self) -> None:
        self._second = None
        self._prefix = ""

    def __call__(self, moment) -> str:
        second = int(moment.timestamp())  # exact: whole seconds since the epoch, microseconds dropped
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{moment.microsecond // 1000:03d}"


PAYMENTS_LOG, ERRORS_LOG, APP_LOG = "payments.log", "errors.log", "app.log"
LOG_FILES = (PAYMENTS_LOG, ERRORS_LOG, APP_LOG)
LOG_FILE_MODE = 0o640
DAY_SECONDS = 86400


def open_log_file(path: str, flags: int) -> int:
    """open()'s opener for the log files: created 0640 whatever the umask, and a file left 0644 by an
    older version is narrowed when it is opened again (chmod fails quietly on a file we do not own)."""
    fd = os.open(path, flags, LOG_FILE_MODE)
    try:
        mode = os.fstat(fd).st_mode & 0o777
        if mode & ~LOG_FILE_MODE:
            os.fchmod(fd, mode & LOG_FILE_MODE)
    except OSError:
        pass
    return fd


class SizeRotation:
    """loguru rotation by size, without loguru's per-message seek()+tell() on the text file (a flush and
    two syscalls for every line on every sink: the receiver's biggest cost per callback).

    Also rotates at the first line of a new UTC day when the file was last written on an earlier one, so
    that no file mixes days: `privacy retain` deletes a file by its age (its newest line), and a file kept
    open for months by a quiet installation would otherwise hold phone numbers past their retention.

    Counts the characters written since the real size was last read, and reads the real size
    (os.fstat; the sink is line-buffered, so it is current) when that estimate reaches the limit or every
    `check_every` messages; so a file written by several processes (serve --workers N) still rotates
    near the limit. Rotates when the real size plus the message would pass the limit, as loguru does
    (except that an empty file is kept: a batch larger than the limit goes into one file)."""

    def __init__(self, limit_bytes: float, check_every: int = 256, clock=time.time):
        self.limit = limit_bytes
        self.check_every = check_every
        self.clock = clock
        self._file = None
        self._size = 0
        self._countdown = 0
        self._day_end = 0.0

    def __call__(self, message, file) -> bool:
        length = len(message)
        now = self.clock()
        if file is not self._file or self._countdown <= 0 or self._size + length > self.limit or now >= self._day_end:
            self._file = file
            file.flush()
            status = os.fstat(file.fileno())
            self._size = status.st_size
            self._countdown = self.check_every
            day_start = now - now % DAY_SECONDS
            self._day_end = day_start + DAY_SECONDS
            # an empty file is never rotated away
            if self._size and (self._size + length > self.limit or status.st_mtime < day_start):
                self._file = None  # the next message goes to a new file: measure it then
                return True
        self._size += length * 2 if not message.isascii() else length  # UTF-8 is at most ~2x here; over-estimate
        self._countdown -= 1
        return False


def _rotation(setting):
    """A size setting ("10 MB") becomes a SizeRotation (size and UTC day); anything else is loguru's own."""
    if isinstance(setting, str):
        from loguru._string_parsers import parse_size

        try:
            size = parse_size(setting)
        except ValueError:
            size = None
        if size is not None:
            return SizeRotation(size)
    return setting


def secrets_of(config: Config) -> tuple[str, ...]:
    """Literal secret values to scrub from any log text, whatever key they hide behind."""
    values = (
        config.webhook.password.get_secret_value(),
        config.webhook.previous_password.get_secret_value(),
        config.azampay.client_secret.get_secret_value(),
        config.azampay.api_key.get_secret_value(),
        config.receiver.checkout_api_key.get_secret_value(),
    )
    return tuple(v for v in values if v)


def configure_logging(
    config: LoggingConfig,
    component: str = "app",
    secrets: tuple[str, ...] = (),
    stderr_level: str | None = "WARNING",
    batched: bool = False,
) -> None:
    """batched=True (the receiver's workers): file lines are written in batches, at most 0.1 s late
    (BatchedFileSink), instead of one write() per line per file."""
    directory = Path(config.dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the value is valid text; only the file system can say it is unusable
        raise ConfigError(
            f"invalid config value for logging.dir: cannot create {directory}: {exc.strerror or exc}"
        ) from None

    stamp = _UtcStamp()

    def scrub(record) -> None:
        record["extra"]["utc"] = stamp(record["time"])
        if record["extra"].get("redacted"):
            # the caller already passed its text through pipeline.redact (e.g. redact_body on the hot
            # callback path); only the literal secrets are scrubbed again, which is cheap
            message = record["message"]
            for secret in secrets:
                if secret and len(secret) >= 4:
                    message = message.replace(secret, REDACTED)
            record["message"] = escape_controls(message)
        else:
            record["message"] = escape_controls(redact_text(record["message"], secrets))
        record["extra"].setdefault("component", component)

    global _received_line
    _received_line = None
    logger.remove()
    logger.configure(patcher=scrub, extra={"component": component})

    def add_file(name: str, **options):
        # one rotation object per file: each counts its own file's size
        # watch: a file another process rotated (several `serve` workers, the scheduler and the CLI share
        # them) is reopened by name at the next write instead of written on under its rotated name; one
        # stat per write, per batch in the receiver
        file_options = {
            "rotation": _rotation(config.rotation),
            "retention": config.retention,
            "encoding": "utf-8",
            "opener": open_log_file,
            "watch": True,
        }
        if batched:
            sink = BatchedFileSink(directory / name, **file_options)
            logger.add(sink, format=_FORMAT, enqueue=False, **_SAFE_TRACEBACKS, **options)
            return sink
        logger.add(directory / name, format=_FORMAT, enqueue=False, **_SAFE_TRACEBACKS, **file_options, **options)
        return None

    payments_sink = add_file(PAYMENTS_LOG, level="INFO", filter=_payments_only)
    add_file(ERRORS_LOG, level="ERROR")
    app_sink = add_file(APP_LOG, level=config.level)
    if stderr_level:
        logger.add(sys.stderr, level=stderr_level, format="{level}: {message}", **_SAFE_TRACEBACKS)
    if batched:
        info = logger.level("INFO").no
        if not stderr_level or logger.level(stderr_level).no > info:
            # exactly the files loguru would send a payments INFO line to
            sinks = (payments_sink, app_sink) if logger.level(config.level).no <= info else (payments_sink,)
            _received_line = _ReceivedLine(sinks, component, secrets)


class _UtcStampOf:
    """YYYY-MM-DD HH:mm:ss.SSS (UTC) of a time.time() value; the part up to the second is cached."""

    __slots__ = ("_second", "_prefix")

    def __init__(self) -> None:
        self._second = None
        self._prefix = ""

    def __call__(self, moment: float) -> str:
        millis = int(moment * 1000)
        second = millis // 1000
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{millis % 1000:03d}"


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

    Valid only while loguru's handlers are the ones configure_logging() installed (anything added or
    removed since, e.g. a test's own sink, and log_received_callback goes through loguru again)."""

    def __init__(self, sinks, component: str, secrets: tuple[str, ...]):
        self.sinks = tuple(sinks)
        self.handlers = logger._core.handlers  # loguru replaces this dict on every add/remove
        self.prefix = f" | INFO     | {component} | "
        self.secrets = tuple(secret for secret in secrets if secret and len(secret) >= 4)
        self.stamp = _UtcStampOf()
        self.lock = threading.Lock()
        self.rendering = threading.Lock()

    def active(self) -> bool:
        core = logger._core
        return core.handlers is self.handlers and core.activation_none and not core.activation_list

    def render(self, item: _Deferred) -> str:
        message = "Received Azam Pay callback: " + redact_body(item.body, decoded=item.decoded)
        for secret in self.secrets:  # as the scrub patcher does for text already redacted
            message = message.replace(secret, REDACTED)
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
    otherwise (and whenever loguru's handlers changed since configure_logging) it is an ordinary loguru line."""
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
        from loguru._file_sink import FileSink

        self._file = FileSink(str(path), **file_options)
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


def _payments_only(record) -> bool:
    return record["extra"].get("channel") == "payments"


def warn_if_open(config: Config) -> None:
    """DESIGN §4: with no credential configured every callback is trusted, as the old view did. Say so at startup."""
    if config.callbacks_trusted_without_credential:
        logger.warning(
            "No webhook password or signature key configured: every callback is trusted "
            "(set AZAM_PAY_WEBHOOK_PASSWORD or webhook.signature_public_key_pem)"
        )
