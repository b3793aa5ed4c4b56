"""The disk spool's line format: one JSON object per line, enough to rebuild the payment_events row exactly.

The receiver writes these lines when the database is unreachable (receiver.spool); `jobs.spool` reads
them back. Both sides use only this module, so the format lives in one place.

A line:
    {"v": 1, "id": uuid4 hex, "received_at": ISO-8601 with microseconds and offset,
     "source": "callback", "body_b64": ..., "content_type", "remote_addr", "headers" (JSON text),
     "auth", "parse_error" (the receiver's final verdict or null),
     "fields": "body" (typed fields are re-extracted from the body) | "none" (the body was not read as JSON),
     "body_sha256": SHA-256 of the bytes received (the body is stored, and spooled, without its secrets;
                    absent in lines written before: the body is then the bytes received, and is redacted
                    when it is replayed)}
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import uuid
from datetime import datetime
from typing import Any

from pipeline.events import EventFields, decode_json, extract_fields
from pipeline.fold import Source
from pipeline.privacy import BodyRedactor
from pipeline.store.events import event_row

VERSION = 1
SUFFIX = ".jsonl"  # a file a receiver process may still be appending to
CLAIMED_SUFFIX = ".jsonl.claimed"  # renamed by the ingest job: nobody writes to it any more
DEDUPE_PREFIX = "spool:"


def spool_record(row: dict[str, Any], typed: bool) -> dict[str, Any]:
    """A spool line (as a dict) for a payment_events row built by the receiver."""
    received_at: datetime = row["received_at"]
    return {
        "v": VERSION,
        "id": uuid.uuid4().hex,
        "received_at": received_at.isoformat(timespec="microseconds"),
        "source": row["source"],
        "body_b64": base64.b64encode(row["body"]).decode("ascii"),
        "content_type": row.get("content_type"),
        "remote_addr": row.get("remote_addr"),
        "headers": row.get("headers"),
        "auth": row["auth"],
        "parse_error": row.get("parse_error"),
        "fields": "body" if typed else "none",
        "body_sha256": row["body_sha256"],
    }


def encode_record(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"


def row_from_record(record: Any, redactor: BodyRedactor | None = None) -> dict[str, Any]:
    """The payment_events row for a spool line, with dedupe_key "spool:<id>". ValueError when the line is unusable.
    `redactor`: a line written before bodies were spooled without their secrets loses them here."""
    if not isinstance(record, dict):
        raise ValueError("spool line is not a JSON object")
    try:
        line_id = record["id"]
        if not isinstance(line_id, str) or not line_id or len(line_id) > 100:
            raise ValueError("bad id")
        received_at = datetime.fromisoformat(record["received_at"])
        if received_at.tzinfo is None:
            raise ValueError("received_at has no UTC offset")
        body = base64.b64decode(record["body_b64"], validate=True)
        typed = record.get("fields", "body") == "body"
        decoded = decode_json(body) if typed else None
        fields = extract_fields(body, decoded) if typed else EventFields()
        if record.get("parse_error") is not None:
            fields = dataclasses.replace(fields, parse_error=str(record["parse_error"]))
        body_sha256 = record.get("body_sha256")
        if body_sha256 is not None and (not isinstance(body_sha256, str) or len(body_sha256) != 64):
            raise ValueError("bad body_sha256")
        return event_row(
            source=record.get("source", Source.CALLBACK),
            body=body,
            stored_body=redactor.stored_body(body, decoded) if redactor is not None else None,
            body_sha256=body_sha256,
            received_at=received_at,
            auth=record["auth"],
            fields=fields,
            content_type=record.get("content_type"),
            remote_addr=record.get("remote_addr"),
            headers=record.get("headers"),
            dedupe_key=DEDUPE_PREFIX + line_id,
        )
    except (KeyError, TypeError, binascii.Error) as exc:
        raise ValueError(f"bad spool line: {type(exc).__name__}: {exc}") from None
