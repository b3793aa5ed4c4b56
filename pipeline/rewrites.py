"""What the privacy rewrites change (docs/privacy.md): pure decisions over one body, one number or one file
name. No database, no clock; jobs/privacy.py, jobs/retain.py and jobs/log_sweep.py own the transactions.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.errors import InputError
from pipeline.events import decode_json, normalise_msisdn
from pipeline.json_out import dump_json
from pipeline.logs import LOG_FILES
from pipeline.privacy import (
    RETAINED_PREFIX,
    BodyRedactor,
    PrivacyKey,
    numbers_in,
    retained_msisdn,
    text_without_numbers,
    without_numbers,
)

# bytes a body must contain before it is decoded to look for a secret (pipeline.redact's key words)
_SECRET_HINTS = (b"pass", b"secret", b"token", b"api", b"authorization", b"credential")

# number -> (event ids, donation ids) holding it
Places = dict[str, tuple[list[int], list[int]]]


# --- secrets -----------------------------------------------------------------------------------


def may_hold_secret(body: bytes, redactor: BodyRedactor) -> bool:
    lowered = body.lower()
    return any(hint in lowered for hint in _SECRET_HINTS) or redactor.has_literal(body)


def scrubbed(redactor: BodyRedactor, body: bytes) -> bytes | None:
    """The body without its secrets, or None when it has none to replace."""
    if not may_hold_secret(body, redactor):
        return None
    return redactor.stored_body(body, decode_json(body))


# --- phone numbers -----------------------------------------------------------------------------


def body_without_numbers(
    key: PrivacyKey, body: bytes, msisdn: str | None, only: frozenset[str] | None = None
) -> bytes | None:
    """The body with its phone numbers (all, or `only` these) replaced; None when it has none to replace.
    A JSON body by its fields (pipeline.privacy.body_number), any other one by the numbers in its text."""
    decoded = decode_json(body)
    if decoded.error is not None or not isinstance(decoded.data, (dict, list)):
        return text_without_numbers(key, body, only)
    known = frozenset(
        number for number in (msisdn, normalise_msisdn(msisdn)) if number and not number.startswith(RETAINED_PREFIX)
    )
    found = numbers_in(decoded.data, known)
    if only is not None:
        found &= only
    if not found:
        return None
    return dump_json(without_numbers(key, decoded.data, known, only=found))


def places(
    events: Iterable[tuple[int, str]], donations: Iterable[tuple[int, str]], exclude: set[str] = frozenset()
) -> Places:
    """number -> (event ids, donation ids) holding it, numbers in `exclude` left out."""
    found: Places = {}
    for event_id, number in events:
        if number not in exclude:
            found.setdefault(number, ([], []))[0].append(event_id)
    for donation_id, number in donations:
        if number not in exclude:
            found.setdefault(number, ([], []))[1].append(donation_id)
    return found


def donor_numbers(key: PrivacyKey, msisdn: str) -> tuple[str, str]:
    """(the number as stored in clear, as stored once retained) for a number a donor gives; InputError
    when it is not a Tanzanian mobile number."""
    normalised = normalise_msisdn(msisdn)
    if normalised is None:
        raise InputError(f"not a Tanzanian mobile number (0XXXXXXXXX, 255XXXXXXXXX or +255XXXXXXXXX): {msisdn!r}")
    return normalised, retained_msisdn(key, normalised)


def body_patterns(clear: str, hashed: str) -> list[str]:
    """LIKE patterns of a body that may hold the number: its last 9 digits are in every written form."""
    return [f"%{clear[-9:]}%", f"%{hashed}%"]


# --- files -------------------------------------------------------------------------------------


def is_rotated_log(name: str) -> bool:
    """A rotated log file: loguru renames payments.log to payments.<time>[.n].log."""
    for live in LOG_FILES:
        base = live[: -len(".log")]
        if name != live and name.startswith(base + ".") and ".log" in name[len(base) :]:
            return True
    return False
