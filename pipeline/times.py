"""Timestamps. Everything inside azamrecon is an aware UTC datetime; this is where text becomes one."""

from __future__ import annotations

from datetime import UTC, datetime

# What a MySQL DATETIME column holds (years 1000-9999), less the last year: callers do date arithmetic on
# a parsed instant (a report's day bounds, its stuck-pending threshold), which must not overflow datetime.
EARLIEST = datetime(1000, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def parse_utc(text: str) -> datetime:
    """ISO-8601 (a trailing Z allowed; no offset means UTC) to an aware UTC datetime in [EARLIEST, LATEST).
    ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-05:00 is in year 10000
        raise ValueError("out of range") from None
    if not EARLIEST <= parsed < LATEST:
        raise ValueError("out of range")
    return parsed
