"""Reading a callback out of an imported log line (jobs/ingest.py is the import job): pure rules, no I/O.

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

The dedupe key is "import:" + sha256(received_at, canonical JSON body, occurrence number of that pair in
the file), so importing a file twice, or a longer copy of it, adds nothing new twice.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from pipeline.errors import InputError
from pipeline.times import parse_utc

MARKER = "Received Azam Pay callback:"
DEDUPE_PREFIX = "import:"
MAX_DEPTH = 32
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
