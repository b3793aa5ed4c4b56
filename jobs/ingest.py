"""Backfill: import the callbacks an existing deployment already received into the log (source="import").

Which lines are callbacks, and how each is read, is pipeline/import_lines.py. Every other line is
skipped and counted. A line longer than MAX_LINE_BYTES is skipped without being read into memory.
Unreadable callbacks (truncated, garbled, not a dict) are counted as errors and logged by line number
only: nothing from an imported body reaches a log, so no password does.

Each event: source "import", typed fields from pipeline.events.extract_fields, auth decided as the
receiver decides it (a '***' left by redaction, or a stored body's marker, counts as no credential),
and the dedupe key of pipeline.import_lines.dedupe_key. The body is stored as the receiver stores one:
its secrets (the legacy view logged the webhook password) replaced by markers after the credential was
checked (pipeline.privacy), body_sha256 and the dedupe key still computed over the body as read.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from loguru import logger
from sqlalchemy import select
from sqlalchemy.engine import Engine

from pipeline.config import Config
from pipeline.db import transaction
from pipeline.errors import InputError, StoreConflict
from pipeline.events import EventFields, decode_json, extract_fields
from pipeline.fold import Source
from pipeline.import_lines import MARKER, LineError, dedupe_key, parse_line
from pipeline.models import PaymentEvent
from pipeline.privacy import BodyRedactor, redactor_for
from pipeline.redact import is_redacted, log_value
from pipeline.store.driver import chunks
from pipeline.store.events import append_events, event_row

MAX_LINE_BYTES = 1024 * 1024
BATCH_LINES = 1000

Progress = Callable[[int, int], None]


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
        source=Source.IMPORT,
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
