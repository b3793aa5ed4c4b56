"""Logging. Library code only emits through loguru; sinks are configured here, and only entry points call it.

logs/payments.log  payment lines (the webhook guide's greps run against this file)
logs/errors.log    every ERROR and above
logs/app.log       everything
Every record's message passes through pipeline.redact before any sink sees it. Files are created 0640
(the payment lines hold donors' phone numbers: docs/privacy.md), in a directory created 0750, and start anew
each local day as well as at the size limit, so a file's age is the age of its newest line and `privacy
retain` can delete by it. Lines are stamped in logging.timezone, with the UTC offset.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from loguru import logger

from pipeline import loguru_adapter
from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.redact import REDACTED, escape_controls, redact_text
from pipeline.sections import LoggingConfig

# Library code logs payment lines through this; the sink filter routes them to payments.log.
payments = logger.bind(channel="payments")
# The same channel for text already redacted by pipeline.redact (the patcher then only scrubs literal secrets).
payments_redacted = payments.bind(redacted=True)

# {extra[stamp]} is the record's time as YYYY-MM-DD HH:mm:ss.SSS+HH:MM in logging.timezone, rendered once per
# record by the patcher (loguru's {time:...} would render it again for every file the record goes to).
FORMAT = "{extra[stamp]} | {level:<8} | {extra[component]} | {message}"
# loguru's diagnose mode prints every local variable of a traceback: a request's headers (Bearer
# token, X-API-KEY) would reach errors.log untouched by the message scrubber. Plain tracebacks only.
_SAFE_TRACEBACKS = {"diagnose": False, "backtrace": False}

# logging.timezone, set by configure_logging: the stamps and the daily rotation follow the zone the webhook
# guide's `grep "$(date +%Y-%m-%d)"` runs in (the portal team's); stored times stay UTC.
_zone: tzinfo = ZoneInfo(LoggingConfig.model_fields["timezone"].default)


class LogStamp:
    """YYYY-MM-DD HH:mm:ss.SSS+HH:MM of a record's datetime or of a time.time() value, local time in `zone`
    (default: logging.timezone) with its UTC offset, so that `events ingest` reads the instant back
    exactly; the part up to the second is cached (one instance per thread, or behind a lock)."""

    __slots__ = ("_second", "_prefix", "_offset", "zone")

    def __init__(self, zone: tzinfo | None = None) -> None:
        self.zone = zone or _zone
        self._second = None
        self._prefix = self._offset = ""

    def __call__(self, moment: datetime | float) -> str:
        if moment.__class__ is float:
            second, millis = divmod(int(moment * 1000), 1000)
        else:
            second = int(moment.timestamp())  # exact: whole seconds since the epoch, microseconds dropped
            millis = moment.microsecond // 1000
        if second != self._second:
            local = datetime.fromtimestamp(second, self.zone)
            self._prefix = local.strftime("%Y-%m-%d %H:%M:%S")
            offset = local.strftime("%z")  # +0300
            self._offset = f"{offset[:3]}:{offset[3:]}"
            self._second = second
        return f"{self._prefix}.{millis:03d}{self._offset}"


def day_bounds(now: float, zone: tzinfo | None = None) -> tuple[float, float]:
    """Start and end (epoch seconds) of the local day in `zone` (default logging.timezone) holding `now`."""
    midnight = datetime.fromtimestamp(now, zone or _zone).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.timestamp(), (midnight + timedelta(days=1)).timestamp()


PAYMENTS_LOG, ERRORS_LOG, APP_LOG = "payments.log", "errors.log", "app.log"
LOG_FILES = (PAYMENTS_LOG, ERRORS_LOG, APP_LOG)
LOG_FILE_MODE = 0o640
LOG_DIR_MODE = 0o750


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

    Also rotates at the first line of a new local day (logging.timezone) when the file was last written on an earlier one, so
    that no file mixes days: `privacy retain` deletes a file by its age (its newest line), and a file kept
    open for months by a quiet installation would otherwise hold phone numbers past their retention.

    Counts the characters written since the real size was last read, and reads the real size
    (os.fstat; the sink is line-buffered, so it is current) when that estimate reaches the limit or every
    `check_every` messages; so a file written by several processes (serve --workers N) still rotates
    near the limit. Rotates when the real size plus the message would pass the limit, as loguru does
    (except that an empty file is kept: a batch larger than the limit goes into one file)."""

    def __init__(self, limit_bytes: float, check_every: int = 256, clock=time.time, zone: tzinfo | None = None):
        self.limit = limit_bytes
        self.check_every = check_every
        self.clock = clock
        self.zone = zone or _zone
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
            day_start, self._day_end = day_bounds(now, self.zone)
            # an empty file is never rotated away
            if self._size and (self._size + length > self.limit or status.st_mtime < day_start):
                self._file = None  # the next message goes to a new file: measure it then
                return True
        self._size += length * 2 if not message.isascii() else length  # UTF-8 is at most ~2x here; over-estimate
        self._countdown -= 1
        return False


def _rotation(setting):
    """A size setting ("10 MB") becomes a SizeRotation (size and local day); anything else is loguru's own."""
    if isinstance(setting, str):
        size = loguru_adapter.parse_size(setting)
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
        # an error that quotes the DATABASE_URL (an untranslated one, on a job's failure line) must not
        # carry its password: both its plain and its percent-encoded spelling
        *_database_passwords(config.database.url),
    )
    return tuple(v for v in values if v)


def _database_passwords(url: str) -> tuple[str, ...]:
    from urllib.parse import quote

    from sqlalchemy.engine import make_url

    password = make_url(url).password
    return (password, quote(password, safe="")) if password else ()


def configure_logging(
    config: LoggingConfig,
    component: str = "app",
    secrets: tuple[str, ...] = (),
    stderr_level: str | None = "WARNING",
    file_sink: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """The sinks: the three files, and stderr from `stderr_level` up. `file_sink(path, **file_options)`, when
    given, builds each file's sink object (the receiver's batched sink, receiver.logsink) instead of loguru's
    own; the objects it built are returned by file name."""
    global _zone
    _zone = ZoneInfo(config.timezone)
    directory = Path(config.dir)
    try:
        if not directory.is_dir():
            directory.mkdir(mode=LOG_DIR_MODE, parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # 0750 whatever the umask, like the files' 0640 (docs/privacy.md)
                directory.chmod(LOG_DIR_MODE)
    except OSError as exc:  # the value is valid text; only the file system can say it is unusable
        raise ConfigError(
            f"invalid config value for logging.dir: cannot create {directory}: {exc.strerror or exc}"
        ) from None

    stamp = LogStamp()

    def scrub(record) -> None:
        record["extra"]["stamp"] = stamp(record["time"])
        if record["extra"].get("redacted"):
            # the caller already passed its text through pipeline.redact (e.g. redact_body on the hot
            # callback path); only the literal secrets are scrubbed again, which is cheap
            record["message"] = escape_controls(scrub_secrets(record["message"], secrets))
        else:
            record["message"] = escape_controls(redact_text(record["message"], secrets))
        record["extra"].setdefault("component", component)

    logger.remove()
    logger.configure(patcher=scrub, extra={"component": component})
    sinks: dict[str, Any] = {}

    def add_file(name: str, **options) -> None:
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
        if file_sink is not None:
            sinks[name] = file_sink(directory / name, **file_options)
            logger.add(sinks[name], format=FORMAT, enqueue=False, **_SAFE_TRACEBACKS, **options)
        else:
            logger.add(directory / name, format=FORMAT, enqueue=False, **_SAFE_TRACEBACKS, **file_options, **options)

    add_file(PAYMENTS_LOG, level="INFO", filter=_payments_only)
    add_file(ERRORS_LOG, level="ERROR")
    add_file(APP_LOG, level=config.level)
    if stderr_level:
        logger.add(sys.stderr, level=stderr_level, format="{level}: {message}", **_SAFE_TRACEBACKS)
    return sinks


def scrub_secrets(text: str, secrets: tuple[str, ...]) -> str:
    """Literal secrets (4 characters or more) replaced in text pipeline.redact has already redacted."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text


def line_prefix(level: str, component: str) -> str:
    """What FORMAT writes between a record's time and its message."""
    return f" | {level:<8} | {component} | "


def _payments_only(record) -> bool:
    return record["extra"].get("channel") == "payments"


def warn_if_open(config: Config) -> None:
    """With no credential configured every callback is trusted (docs/architecture.md, "Departures"), as the old view did. Say so at startup."""
    if config.callbacks_trusted_without_credential:
        logger.warning(
            "No webhook password or signature key configured: every callback is trusted "
            "(set AZAM_PAY_WEBHOOK_PASSWORD or webhook.signature_public_key_pem)"
        )
