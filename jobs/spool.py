"""Spool ingest: replay callbacks the receiver spooled to disk during a database outage, exactly once.

Each line becomes the payment_events row the receiver would have written, with its original
received_at and dedupe_key "spool:<line id>", so running the ingest twice (or two ingests at once)
adds nothing. A file is claimed first (renamed to *.jsonl.claimed under the writer's flock, so no
receiver appends to it afterwards) and deleted only when every line of it is in the log. A torn last
line (a crash mid-write) is skipped and the file kept, as is a file with an unreadable line.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from datetime import datetime
from pathlib import Path

from loguru import logger
from sqlalchemy import select
from sqlalchemy.engine import Engine

from pipeline.db import transaction
from pipeline.models import PaymentEvent
from pipeline.privacy import BodyRedactor
from pipeline.store.events import already_appended, append_events
from pipeline.store.spool import CLAIMED_SUFFIX, SUFFIX, row_from_record

BATCH = 500


def claim(path: Path, wait_seconds: float = 2.0) -> Path | None:
    """Rename a live spool file to *.claimed while holding its lock; None when it vanished or stays locked."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    logger.warning("spool file {} stays locked; left for the next run", path)
                    return None
                time.sleep(0.01)
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return None  # someone else claimed it meanwhile
        except FileNotFoundError:
            return None
        claimed = path.with_name(path.name[: -len(SUFFIX)] + CLAIMED_SUFFIX)
        os.rename(path, claimed)
        return claimed
    finally:
        os.close(fd)


def _existing_keys(session, keys: list[str]) -> set[str]:
    return set(session.scalars(select(PaymentEvent.dedupe_key).where(PaymentEvent.dedupe_key.in_(keys))))


def _ingest_file(engine: Engine, path: Path, counts: dict, redactor: BodyRedactor | None, tell: bool) -> None:
    """tell: log the file's torn and unreadable lines (they are counted whatever it says)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline, else an incomplete last line
    keep = False
    if torn:
        counts["torn"] += 1
        keep = True
        if tell:
            logger.warning("spool file {}: torn last line ({} bytes) skipped; file kept", path, len(torn))
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        counts["lines"] += 1
        try:
            rows.append(row_from_record(json.loads(line), redactor))
        except ValueError as exc:
            counts["invalid"] += 1
            keep = True
            if tell:
                logger.error("spool file {} line {}: {}; file kept", path, number, str(exc)[:200])
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        with transaction(engine, immediate=True) as session:
            existing = _existing_keys(session, [row["dedupe_key"] for row in chunk])
            committed = already_appended(session, chunk)  # spooled because a COMMIT's answer was lost
            fresh = [
                row
                for row in chunk
                if row["dedupe_key"] not in existing and (row["body_sha256"], row["received_at"]) not in committed
            ]
            append_events(session, fresh)
        counts["duplicates"] += len(chunk) - len(fresh)
        counts["ingested"] += len(fresh)
    if keep:
        return
    try:
        path.unlink()
        counts["files_deleted"] += 1
    except FileNotFoundError:
        pass


def ingest_spool(
    engine: Engine,
    spool_dir: str | Path,
    now: datetime,
    redactor: BodyRedactor | None = None,
    *,
    retell_kept: bool = True,
) -> dict:
    """Replay every spool file under `spool_dir` into the log; return counts. Idempotent. `redactor` (the
    scheduler and `events ingest-spool` pass it) takes the secrets out of lines spooled by a receiver
    that did not yet (the receiver spools bodies without them). retell_kept=False (the scheduler, every
    30 s): a file kept by an earlier run for a torn or unreadable line is counted but its lines are not
    logged again; they were logged when the file was claimed, and it stays until an operator acts."""
    directory = Path(spool_dir)
    counts = {"files": 0, "lines": 0, "ingested": 0, "duplicates": 0, "torn": 0, "invalid": 0, "files_deleted": 0}
    if not directory.is_dir():
        return counts
    claimed_now = {claim(path) for path in sorted(directory.glob("*" + SUFFIX))}
    for path in sorted(directory.glob("*" + CLAIMED_SUFFIX)):
        counts["files"] += 1
        _ingest_file(engine, path, counts, redactor, tell=retell_kept or path in claimed_now)
    if counts["ingested"]:
        logger.info(
            "spool ingest: {} callback(s) replayed into the log from {} file(s)", counts["ingested"], counts["files"]
        )
    return counts
