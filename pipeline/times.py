"""Timestamps. Everything inside azamrecon is an aware UTC datetime; this is where text becomes one."""
from __future__ import annotations

from datetime import datetime, timezone


def parse_utc(text: str) -> datetime:
    """ISO-8601 (a trailing Z allowed; no offset means UTC) to an aware UTC datetime. ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)
