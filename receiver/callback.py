"""What a callback request is and what it is answered: pure functions, no I/O, no clock.

classify_callback() decides, from the request's body, headers and peer and the receiver's settings, the
request's Outcome, its typed fields, its auth value and the payment_events row to store. answer_for()
turns that Outcome and what the writer did with the row (receiver.writer.Written) into the status code
and JSON body. receiver.app.CallbackEndpoint only reads, stores, logs and sends (docs/architecture.md,
"One callback's path").
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pipeline.auth import FAILED, UNVERIFIED, Authenticator
from pipeline.events import Decoded, EventFields, decode_json, extract_fields
from pipeline.fold import Source
from pipeline.privacy import BodyRedactor
from pipeline.resolution import ReferenceFormat
from pipeline.store.events import Claim, event_row, select_headers
from receiver.writer import Written


class Outcome(StrEnum):
    """What a callback request is, decided before it is stored (every one of them is stored)."""

    TOO_LARGE = "too_large"  # 413: over webhook.max_body_bytes; the prefix is stored
    NOT_JSON = "not_json"  # 415: not an application/json (or +json) content type
    INVALID = "invalid"  # 400: not JSON, or not a usable callback
    REFUSED = "refused"  # 403: the client address is not in webhook.allowed_ips
    FORBIDDEN = "forbidden"  # 403: a credential is present but wrong
    UNVERIFIED = "unverified"  # 202: a credential is required but absent
    CHECKED = "checked"  # usable and authenticated: 200 or 404, as the writer's donation lookup decides


def _answer(status: int, payload: dict) -> tuple[int, bytes]:
    return status, json.dumps(payload, separators=(",", ":")).encode()


ANSWER_KNOWN = _answer(200, {"status": "received"})
ANSWER_UNKNOWN = _answer(404, {"status": "not_found", "detail": "no donation matches this callback; it is stored"})
ANSWER_UNVERIFIED = _answer(
    202, {"status": "accepted", "detail": "credentials required but absent; stored as unverified"}
)
ANSWER_FORBIDDEN = _answer(403, {"status": "forbidden", "detail": "credentials rejected; stored"})
ANSWER_REFUSED = _answer(403, {"status": "forbidden", "detail": "client address not allowed; stored"})
ANSWER_NOT_JSON = _answer(415, {"status": "unsupported_media_type", "detail": "expected application/json; stored"})
ANSWER_SPOOLED = _answer(
    503, {"status": "spooled", "detail": "database unavailable; the callback is spooled and will be ingested later"}
)
ANSWER_FAILED = _answer(500, {"status": "error", "detail": "the callback could not be stored"})
ANSWER_NO_SPACE = _answer(507, {"status": "error", "detail": "the callback could not be stored: no space"})

# the writer's outcomes that decide the answer whatever the request was
_WRITTEN_ANSWERS = {
    Written.KNOWN: ANSWER_KNOWN,
    Written.UNKNOWN: ANSWER_UNKNOWN,
    Written.SPOOLED: ANSWER_SPOOLED,
    Written.NO_SPACE: ANSWER_NO_SPACE,
    Written.FAILED: ANSWER_FAILED,
}
_FIXED_ANSWERS = {
    Outcome.REFUSED: ANSWER_REFUSED,
    Outcome.FORBIDDEN: ANSWER_FORBIDDEN,
    Outcome.UNVERIFIED: ANSWER_UNVERIFIED,
    Outcome.NOT_JSON: ANSWER_NOT_JSON,
}


@dataclass(frozen=True, slots=True)
class Rules:
    """The receiver's settings a callback is classified by."""

    limit: int  # webhook.max_body_bytes
    auth: Authenticator
    references: ReferenceFormat
    redactor: BodyRedactor


@dataclass(frozen=True, slots=True)
class Classified:
    outcome: Outcome
    fields: EventFields
    auth: str  # the stored auth value
    keys: Claim | None  # the donation lookup the writer makes (CHECKED only)
    typed: bool  # the body was parsed as a callback (its typed columns are meaningful)
    decoded: Decoded | None  # the body's JSON, decoded once (for the log line too)
    row: dict[str, Any]  # the payment_events row to store


def decode_headers(raw_headers) -> dict[str, str]:
    """ASGI headers as lower-case names to latin-1 values; a repeated header's values joined by ', '."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw_headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def declared_over(headers: dict[str, str], limit: int) -> bool:
    """The request's Content-Length says the body is over the limit."""
    declared = headers.get("content-length", "")
    return declared.isascii() and declared.isdigit() and int(declared) > limit


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def classify_callback(
    body: bytes, over: bool, headers: dict[str, str], peer: str | None, received_at: datetime, rules: Rules
) -> Classified:
    """The request's Outcome, fields, auth value, lookup and row (over: the body was cut at rules.limit)."""
    auth = rules.auth
    remote_addr = auth.client_address(peer, headers.get("x-forwarded-for"))
    content_type = headers.get("content-type", "")
    typed = False
    decoded = None
    if over:
        outcome = Outcome.TOO_LARGE
        fields = EventFields(
            parse_error=f"body over the limit of {rules.limit} bytes (webhook.max_body_bytes); only the first {rules.limit} bytes are stored"
        )
    elif not is_json(content_type):
        outcome = Outcome.NOT_JSON
        fields = EventFields(parse_error=f"unsupported content type {content_type[:100]!r}: expected application/json")
    else:
        typed = True
        decoded = decode_json(body)
        fields = extract_fields(body, decoded)
        outcome = Outcome.INVALID if fields.parse_error else Outcome.CHECKED

    keys = None
    if not auth.address_allowed(remote_addr):
        note = f"refused: client address {remote_addr} not in webhook.allowed_ips"
        fields = dataclasses.replace(
            fields, parse_error=f"{note}; {fields.parse_error}" if fields.parse_error else note
        )
        auth_value = FAILED
        outcome = Outcome.REFUSED
    elif outcome is Outcome.CHECKED:
        auth_value = auth.check(fields, body)
        if auth_value == FAILED:
            outcome = Outcome.FORBIDDEN
        elif auth_value == UNVERIFIED:
            outcome = Outcome.UNVERIFIED
        else:
            keys = Claim.of(fields, rules.references, auth_value)
    else:
        auth_value = auth.unchecked_auth()

    row = event_row(
        source=Source.CALLBACK,
        body=body,
        # verified above on the bytes received; stored (and spooled) without their secrets
        stored_body=rules.redactor.stored_body(body, decoded),
        received_at=received_at,
        auth=auth_value,
        fields=fields,
        content_type=content_type or None,
        remote_addr=remote_addr,
        headers=select_headers(headers),
    )
    return Classified(outcome, fields, auth_value, keys, typed, decoded, row)


def answer_for(outcome: Outcome, written: Written, limit: int, parse_error: str | None = None) -> tuple[int, bytes]:
    """The status code and JSON body: the writer's outcome first (a lookup's answer, or a failure to store:
    never a 2xx then), else the request's own."""
    answer = _WRITTEN_ANSWERS.get(written)
    if answer is not None:
        return answer
    if outcome is Outcome.TOO_LARGE:
        return _answer(413, {"status": "too_large", "detail": f"body over {limit} bytes; the prefix is stored"})
    if outcome is Outcome.INVALID:
        return _answer(400, {"status": "invalid", "detail": parse_error})
    # a CHECKED row always asks the writer for a lookup, so it never comes back only STORED
    return _FIXED_ANSWERS.get(outcome, ANSWER_FAILED)
