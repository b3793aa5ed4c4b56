"""Backfill: import the callbacks an existing deployment already received into the log (source="import").

Accepted input, detected line by line:

1. A log line containing `Received Azam Pay callback: {...}`: the legacy Django `logs/payments.log`,
   whose body is a Python dict repr (single quotes, None/True/False), or azamrecon's own
   payments.log, which uses the same format (with secrets redacted to '***'). The body is read with
   ast.literal_eval on just the balanced `{...}` part (never eval; size and nesting are bounded; it
   must be a dict) and stored re-serialised as compact JSON. received_at is the line's timestamp:
   `2025-12-19 12:00:00,123` (Django asctime), `2025-12-19 12:00:00.123` (loguru),
   `2025-12-19T12:00:00.123456Z` / `+03:00` (ISO-8601), `[19/Dec/2025 12:00:00]` (runserver) or
   `[19/Dec/2025:12:00:00 +0300]`. A timestamp without an offset is taken to be at `naive_zone` (UTC
   unless `events ingest --naive-offset` says otherwise: Django writes its TIME_ZONE). A callback line
   without a timestamp is an error (its time cannot be known).
2. A JSON line: either an envelope `{"received_at": "<ISO-8601>", "body": {...}}` (body may also be
   a string holding the raw JSON text, stored byte for byte), or a bare callback body `{...}`, stored
   as the line's bytes, with received_at from its own "received_at" key if it has one, else `now`
   (the import time). A JSON object with no callback field in it is skipped.

Every other line is skipped and counted. A line longer than MAX_LINE_BYTES is skipped without being
read into memory. Unreadable callbacks (truncated, garbled, not a dict) are counted as errors and
logged by line number only: nothing from an imported body reaches a log, so no password does.

Each event: source "import", typed fields from pipeline.events.extract_fields, auth decided as the
receiver decides it (a '***' left by redaction, or a stored body's marker, counts as no credential),
and dedupe_key "import:" + sha256(received_at, canonical JSON body, occurrence number of that pair in
the file), so importing a file twice, or a longer copy of it, adds nothing new twice. The body is
stored as the receiver stores one: its secrets (the legacy view logged the webhook password) replaced
by markers after the credential was checked (pipeline.privacy), body_sha256 and the dedupe key still
computed over the body as read.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO

from loguru import logger
from sqlalchemy import select
from sqlalchemy.engine import Engine

from pipeline.config import Config
from pipeline.db import transaction
from pipeline.errors import InputError, StoreConflict
from pipeline.events import EventFields, decode_json, extract_fields
from pipeline.models import PaymentEvent
from pipeline.privacy import BodyRedactor, redactor_for
from pipeline.redact import is_redacted, log_value
from pipeline.store.driver import chunks
from pipeline.store.events import append_events, event_row
from pipeline.times import parse_utc

MARKER = "Received Azam Pay callback:"
DEDUPE_PREFIX = "import:"
MAX_LINE_BYTES = 1024 * 1024
MAX_DEPTH = 32
BATCH_LINES = 1000
CALLBACK_KEYS = frozenset(
    {
        "transactionstatus",
        "utilityref",
        "externalreference",
        "reference",
        "transid",
        "msisdn",
        "mnoreference",
        "operator",
        "additionalProperties",
    }
)
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_ISO_STAMP = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[ T](?P<time>\d{2}:\d{2}:\d{2})(?:[.,](?P<fraction>\d{1,6}))?\d*\s?(?P<zone>Z|[+-]\d{2}:?\d{2}(?![\d:]))?"
)
_CLF_STAMP = re.compile(
    r"\[(?P<day>\d{1,2})/(?P<month>[A-Z][a-z]{2})/(?P<year>\d{4})[: ](?P<time>\d{2}:\d{2}:\d{2})(?:[.,](?P<fraction>\d{1,6}))?(?:\s(?P<zone>[+-]\d{4}))?\]"
)

Progress = Callable[[int, int], None]


class LineError(ValueError):
    """A callback line that cannot be imported; the message never quotes the body."""


def _zone(text: str | None) -> timezone:
    if not text or text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:4])))


_OFFSET = re.compile(r"^(?:Z|[+-](?P<hours>[01]\d|2[0-3]):?(?P<minutes>[0-5]\d))$")


def parse_offset(text: str) -> timezone:
    """'+03:00', '+0300', '-05:00' or 'Z' as a fixed zone; InputError otherwise."""
    text = text.strip()
    if not _OFFSET.match(text):
        raise InputError(f"not a UTC offset like +03:00: {text!r}")
    return _zone(text)


def parse_timestamp(text: str, naive_zone: timezone = UTC) -> datetime | None:
    """The first recognised timestamp in `text` as an aware UTC datetime; one written without an offset
    is taken to be in `naive_zone` (Django writes its asctime in its TIME_ZONE, often +03:00)."""
    candidates = []
    match = _ISO_STAMP.search(text)
    if match:
        candidates.append((match.start(), "iso", match))
    match = _CLF_STAMP.search(text)
    if match:
        candidates.append((match.start(), "clf", match))
    for _, kind, match in sorted(candidates, key=lambda item: item[0]):
        fraction = (match.group("fraction") or "").ljust(6, "0")
        try:
            if kind == "iso":
                year, month, day = (int(part) for part in match.group("date").split("-"))
            else:
                year, month, day = int(match.group("year")), _MONTHS.get(match.group("month")), int(match.group("day"))
                if month is None:
                    continue
            hour, minute, second = (int(part) for part in match.group("time").split(":"))
            zone = _zone(match.group("zone")) if match.group("zone") else naive_zone
            moment = datetime(year, month, day, hour, minute, second, int(fraction or 0), tzinfo=zone)
        except ValueError:
            continue
        return moment.astimezone(UTC)
    return None


def parse_iso(value: Any) -> datetime:
    if not isinstance(value, str):
        raise LineError("received_at is not a string")
    try:
        return parse_utc(value)
    except ValueError:
        raise LineError("received_at is not ISO-8601") from None


def balanced_end(text: str, start: int) -> tuple[int, int]:
    """(index after the bracket closing the one at `start`, nesting depth), skipping quoted strings.
    LineError when the text ends first (a truncated line) or nests deeper than MAX_DEPTH."""
    depth = deepest = 0
    quote = None
    index, length = start, len(text)
    while index < length:
        char = text[index]
        if quote is not None:
            if char == "\\":
                index += 2
                continue
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char in "{[(":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                raise LineError(f"body nested deeper than {MAX_DEPTH}")
        elif char in "}])":
            depth -= 1
            if depth == 0:
                return index + 1, deepest
            if depth < 0:
                break
        index += 1
    raise LineError("body is truncated (no closing brace)")


def parse_dict_repr(text: str) -> dict:
    """A Python dict repr (or JSON object text) to a dict, by literal evaluation only."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            raise LineError("body is not a Python dict or JSON object literal") from None
    if not isinstance(value, dict):
        raise LineError(f"body is a {type(value).__name__}, not a dict")
    return value


def canonical(body: dict) -> str:
    try:
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LineError(f"body holds a value JSON cannot carry ({type(exc).__name__})") from None


def compact(body: dict) -> bytes:
    try:
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: escape it rather than store invalid UTF-8
            return json.dumps(body, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise LineError(f"body holds a value JSON cannot carry ({type(exc).__name__})") from None


def _looks_like_callback(data: dict) -> bool:
    return any(key in data for key in CALLBACK_KEYS)


def parse_line(
    text: str, now: datetime, naive_zone: timezone = UTC
) -> tuple[datetime, bytes, str, datetime | None] | None:
    """(received_at, stored body bytes, canonical body, the instant its dedupe key names) for a callback
    line; None for any other line. `naive_zone`: see parse_timestamp (log lines only). The key's instant
    is None when the time is not from the line, and reads an offset-less stamp as UTC whatever
    naive_zone says, so importing a file again with another --naive-offset adds no second copy."""
    marker = text.find(MARKER)
    if marker >= 0:
        start = text.find("{", marker + len(MARKER))
        if start < 0 or text[marker + len(MARKER) : start].strip():
            raise LineError("no {...} body after the callback marker")
        end, _ = balanced_end(text, start)
        body = parse_dict_repr(text[start:end])
        received_at = parse_timestamp(text[:marker], naive_zone)
        if received_at is None:
            raise LineError("no timestamp on the line")
        key_at = received_at if naive_zone is UTC else parse_timestamp(text[:marker])
        return received_at, compact(body), canonical(body), key_at
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    balanced_end(stripped, 0)  # depth guard before the JSON parser sees it
    try:
        data = json.loads(stripped)
    except (ValueError, RecursionError):
        if "transactionstatus" in stripped:
            raise LineError("JSON line is not valid JSON") from None
        return None
    if not isinstance(data, dict):
        return None
    if "body" in data and isinstance(data["body"], (dict, str)):
        timed = data.get("received_at") is not None
        received_at = parse_iso(data["received_at"]) if timed else now
        raw = data["body"]
        if isinstance(raw, str):
            try:
                parsed = json.loads(raw)
            except (ValueError, RecursionError):
                parsed = None
            key = canonical(parsed) if isinstance(parsed, dict) else "raw:" + raw
            return received_at, raw.encode("utf-8"), key, received_at if timed else None
        return received_at, compact(raw), canonical(raw), received_at if timed else None
    if not _looks_like_callback(data):
        return None
    timed = data.get("received_at") is not None
    received_at = parse_iso(data["received_at"]) if timed else now
    return received_at, stripped.encode("utf-8"), canonical(data), received_at if timed else None


def dedupe_key(received_at: datetime | None, canonical_body: str, occurrence: int) -> str:
    """received_at None: the line carried no time (it was stored with the import time, which must not
    make a second import look new)."""
    stamp = "untimed" if received_at is None else received_at.isoformat()
    digest = hashlib.sha256(
        f"{stamp}\n{canonical_body}\n{occurrence}".encode("utf-8", errors="surrogatepass")
    ).hexdigest()
    return DEDUPE_PREFIX + digest


class _Auth:
    """The receiver's decision (pipeline.auth.Authenticator), with a redacted credential ('***' or a marker) treated as absent."""

    def __init__(self, config: Config):
        from pipeline.auth import Authenticator

        self.authenticator = Authenticator.from_config(config.webhook)

    def __call__(self, fields: EventFields, body: bytes) -> str:
        if fields.parse_error is not None:
            return self.authenticator.unchecked_auth()
        if is_redacted(fields.password) or is_redacted(fields.signature):
            fields = dataclasses.replace(
                fields,
                password=None if is_redacted(fields.password) else fields.password,
                signature=None if is_redacted(fields.signature) else fields.signature,
            )
        return self.authenticator.check(fields, body)


def _read_lines(handle: BinaryIO):
    """(line bytes or None when over MAX_LINE_BYTES, bytes consumed so far) without ever holding a long line."""
    while True:
        line = handle.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while True:  # drain the rest of the overlong line
                rest = handle.readline(64 * 1024)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None, handle.tell()
            continue
        yield line, handle.tell()


def check_readable(path: str | Path) -> Path:
    """The path, or a one-line InputError when it is missing, a directory or unreadable."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    return path


def ingest_file(
    engine: Engine,
    config: Config,
    path: str | Path,
    now: datetime,
    progress: Progress | None = None,
    naive_zone: timezone = UTC,
) -> dict[str, int]:
    """Import one file; returns counts {read, imported, duplicates, skipped, errors}. Idempotent, whatever
    `naive_zone` (see parse_line: the dedupe key reads an offset-less stamp as written)."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    auth = _Auth(config)
    redactor = redactor_for(config)
    counts = {"read": 0, "imported": 0, "duplicates": 0, "skipped": 0, "errors": 0}
    occurrences: dict[tuple[str, str], int] = {}
    headers_of = lambda number: json.dumps({"import-file": path.name[:200], "import-line": number}, sort_keys=True)  # noqa: E731
    rows: list[dict[str, Any]] = []
    lines_in_batch = 0
    with handle:
        try:
            total = path.stat().st_size
        except OSError:
            total = 0
        position = 0
        try:
            for line, position in _read_lines(handle):
                counts["read"] += 1
                lines_in_batch += 1
                number = counts["read"]
                if line is None:
                    counts["skipped"] += 1
                    logger.warning(f"import {path.name} line {number}: longer than {MAX_LINE_BYTES} bytes, skipped")
                else:
                    row = _row_for(
                        line, number, now, naive_zone, auth, redactor, occurrences, headers_of, path.name, counts
                    )
                    if row is not None:
                        rows.append(row)
                if lines_in_batch >= BATCH_LINES:
                    _flush(engine, rows, counts)
                    rows, lines_in_batch = [], 0
                    if progress:
                        progress(position, total)
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
        _flush(engine, rows, counts)
        if progress:
            progress(max(position, total), max(position, total))
    logger.info(
        f"Import of {path.name}: {counts['read']} lines, {counts['imported']} callbacks imported, "
        f"{counts['duplicates']} already present, {counts['skipped']} skipped, {counts['errors']} unreadable"
    )
    return counts


def _row_for(
    line: bytes,
    number: int,
    now: datetime,
    naive_zone: timezone,
    auth: _Auth,
    redactor: BodyRedactor,
    occurrences: dict,
    headers_of,
    name: str,
    counts: dict,
) -> dict | None:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        text = line.decode("utf-8", errors="replace")
        if MARKER in text or '"transactionstatus"' in text:
            counts["errors"] += 1
            logger.warning(f"import {name} line {number}: not valid UTF-8, skipped")
        else:
            counts["skipped"] += 1
        return None
    try:
        parsed = parse_line(text, now, naive_zone)
    except LineError as exc:
        counts["errors"] += 1
        logger.warning(f"import {name} line {number}: {log_value(str(exc))}")
        return None
    if parsed is None:
        counts["skipped"] += 1
        return None
    received_at, body, key, stamp = parsed
    occurrence = occurrences.get((stamp, key), 0)
    occurrences[(stamp, key)] = occurrence + 1
    decoded = decode_json(body)
    fields = extract_fields(body, decoded)
    verdict = auth(fields, body)  # on the body as read, before its secrets go
    return event_row(
        source="import",
        body=body,
        stored_body=redactor.stored_body(body, decoded),
        received_at=received_at,
        auth=verdict,
        fields=fields,
        content_type="application/json",
        headers=headers_of(number),
        dedupe_key=dedupe_key(stamp, key, occurrence),
    )


CONFLICT_ATTEMPTS = 3  # two imports of one file can deadlock on the dedupe index (MySQL 1213); the batch is run again


def _flush(engine: Engine, rows: list[dict[str, Any]], counts: dict[str, int]) -> None:
    if not rows:
        return
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            inserted = _append_new(engine, rows)
            break
        except StoreConflict:  # rolled back whole: running it again imports each row once
            if attempt == CONFLICT_ATTEMPTS:
                raise
            time.sleep(0.05 * attempt)
    # what the database inserted: a concurrent import of the same file may have added the rest meanwhile
    counts["duplicates"] += len(rows) - inserted
    counts["imported"] += inserted


def _append_new(engine: Engine, rows: list[dict[str, Any]]) -> int:
    keys = [row["dedupe_key"] for row in rows]
    with transaction(engine, immediate=True) as session:
        existing: set[str] = set()
        for part in chunks(keys):
            existing.update(session.scalars(select(PaymentEvent.dedupe_key).where(PaymentEvent.dedupe_key.in_(part))))
        return append_events(session, [row for row in rows if row["dedupe_key"] not in existing])
