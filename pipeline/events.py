"""Callback parsing: tolerant pydantic models for AzamPay's real payloads, and the typed fields the fold reads.

Parsing never decides whether a body is *stored*: every body is stored. It only decides the typed
columns and `parse_error`, which the receiver turns into 400 and the fold into `invalid_payload`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from pipeline.errors import ParseError
from pipeline.fold import CENT, Status

# AzamPay's transactionstatus words (its wire values, any case) and the status each one means
_STATUS_WORDS = {
    "success": Status.SUCCESS,
    "successful": Status.SUCCESS,
    "completed": Status.SUCCESS,
    "failure": Status.FAILED,
    "failed": Status.FAILED,
    "fail": Status.FAILED,
    "cancelled": Status.CANCELLED,
    "canceled": Status.CANCELLED,
}

MSISDN_PATTERN = re.compile(r"^(?:0|255|\+255)?(6[1-9]|7[1-8])([0-9]{7})$")

# column lengths of the typed fields (pipeline.models.PaymentEvent)
_LENGTHS = {"ref": 255, "hint": 64, "status_raw": 255, "operator": 64, "msisdn": 64}


def normalise_status(raw: Any) -> Status:
    """AzamPay's transactionstatus, case-insensitive, to SUCCESS | FAILED | CANCELLED | UNKNOWN."""
    if not isinstance(raw, str):
        return Status.UNKNOWN
    return _STATUS_WORDS.get(raw.strip().lower(), Status.UNKNOWN)


def normalise_msisdn(raw: Any) -> str | None:
    """`0XXXXXXXXX`, `255XXXXXXXXX` or `+255XXXXXXXXX` to `255XXXXXXXXX`; None when it is not a TZ mobile number."""
    if raw is None:
        return None
    text = re.sub(r"[\s-]", "", str(raw))
    match = MSISDN_PATTERN.match(text)
    return f"255{match.group(1)}{match.group(2)}" if match else None


_AMOUNT = re.compile(r"[0-9]+(?:\.[0-9]{1,2})?", re.ASCII)
MAX_AMOUNT = Decimal("1e12")


def parse_amount(raw: Any) -> Decimal | None:
    """The one money grammar for amounts we are sent: ASCII digits, an optional single `.` and at most two
    decimals ("25000", "25000.50"; a JSON integer too). None when absent; ParseError for anything else:
    a sign, an exponent, commas, underscores, spaces, other digits, fractions of a cent, 10^12 or more.
    Callbacks and the portal's checkout both read amounts here."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ParseError(f"amount is not a number: {str(raw)[:40]!r}")
    text = raw.text if isinstance(raw, JsonNumber) else str(raw)
    if not _AMOUNT.fullmatch(text):
        raise ParseError(f"amount is not in the form 12345 or 12345.67: {text[:40]!r}")
    amount = Decimal(text)
    if amount >= MAX_AMOUNT:
        raise ParseError(f"amount out of range: {text[:40]!r}")
    return amount.quantize(CENT)


def _clip(value: Any, length: int) -> str | None:
    """A value for a typed column: text, valid UTF-8 (lone surrogates replaced), at most `length` chars."""
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    text = str(value).encode("utf-8", errors="replace").decode("utf-8")
    return text[:length]


class JsonNumber(float):
    """A JSON number with a fraction or exponent: a float everywhere (the log line's repr is unchanged),
    plus the text it was written as, which parse_amount reads: the float of 25000.000000000001 is
    25000.0 and would match a charge of 25000."""

    __slots__ = ("text",)

    def __new__(cls, text: str) -> JsonNumber:
        number = super().__new__(cls, text)
        number.text = text
        return number


_Scalar = str | int | float | bool | None


class CallbackBody(BaseModel):
    """The callback as AzamPay sends it. Every field is optional; unknown keys are kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    message: _Scalar = None
    user: _Scalar = None
    password: _Scalar = None
    clientId: _Scalar = None
    transactionstatus: _Scalar = None
    operator: _Scalar = None
    reference: _Scalar = None
    externalreference: _Scalar = None
    utilityref: _Scalar = None
    amount: _Scalar = None
    transid: _Scalar = None
    msisdn: _Scalar = None
    mnoreference: _Scalar = None
    submerchantAcc: _Scalar = None
    fspReferenceId: _Scalar = None
    signature: _Scalar = None
    additionalProperties: dict[str, Any] | None = None

    @field_validator("amount", mode="wrap")
    @classmethod
    def _amount_keeps_its_text(cls, value: Any, handler: Any) -> Any:
        return value if isinstance(value, JsonNumber) else handler(value)  # validation would make it a plain float

    @field_validator("additionalProperties", mode="before")
    @classmethod
    def _properties_mapping(cls, value: Any) -> Any:
        # Some integrations send "" or a JSON-encoded string; neither carries a donation id we can trust.
        if value in ("", None):
            return None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return None
        return value if isinstance(value, dict) else None

    def text(self, name: str) -> str | None:
        value = getattr(self, name, None)
        if value is None or isinstance(value, bool):
            return None
        text = str(value).strip()
        return text or None


@dataclass(frozen=True, slots=True)
class EventFields:
    """Typed columns of a payment_events row, extracted once at append time."""

    utilityref: str | None = None
    externalreference: str | None = None
    donation_hint: str | None = None
    transaction_ref: str | None = None
    status_raw: str | None = None
    status: str | None = None
    amount: Decimal | None = None
    operator: str | None = None
    msisdn: str | None = None
    parse_error: str | None = None
    password: str | None = field(default=None, repr=False)  # for authentication only; never stored
    signature: str | None = field(default=None, repr=False)
    amount_error: str | None = None  # why a stated amount is unusable (amount is then None); not a column

    def column_values(self) -> dict[str, Any]:
        return {
            "utilityref": self.utilityref,
            "externalreference": self.externalreference,
            "donation_hint": self.donation_hint,
            "transaction_ref": self.transaction_ref,
            "status_raw": self.status_raw,
            "status": self.status,
            "amount": self.amount,
            "operator": self.operator,
            "msisdn": self.msisdn,
            "parse_error": self.parse_error,
        }


class Decoded:
    """A body's JSON, decoded once and shared by extract_fields and pipeline.redact.redact_body (the
    receiver would otherwise parse every callback twice). `data` is the value, or None with `error`."""

    __slots__ = ("data", "error")

    def __init__(self, data: Any = None, error: str | None = None):
        self.data = data
        self.error = error


# one decoder: json.loads(..., parse_float=...) would build a new one per call, on the receiver's hot path
_DECODER = json.JSONDecoder(parse_float=JsonNumber)


def decode_json(body: bytes) -> Decoded:
    try:
        # what json.loads does with bytes: UTF-8/16/32 detected, lone surrogates kept for the error path
        text = (
            body.decode(json.detect_encoding(body), "surrogatepass") if isinstance(body, (bytes, bytearray)) else body
        )
        return Decoded(_DECODER.decode(text))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return Decoded(None, f"invalid JSON: {str(exc)[:120]}")


def parse_callback(body: bytes, decoded: Decoded | None = None) -> CallbackBody:
    """Parse a callback body (or its already decoded JSON). Raises ParseError (and only ParseError) when
    it is not a usable callback."""
    if decoded is None:
        decoded = decode_json(body)
    if decoded.error is not None:
        raise ParseError(decoded.error)
    data = decoded.data
    if not isinstance(data, dict):
        raise ParseError(f"schema: expected a JSON object, got {type(data).__name__}")
    try:
        callback = CallbackBody.model_validate(data)
    except (ValidationError, RecursionError) as exc:
        first = exc.errors()[0] if isinstance(exc, ValidationError) else {"loc": (), "msg": "too deeply nested"}
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ParseError(f"schema: {where}: {first['msg']}") from None
    return _required(callback)


_FIELD_NAMES = frozenset(CallbackBody.model_fields)
_PLAIN_SCALARS = frozenset((str, int, float, JsonNumber, bool, type(None)))
_INT_BOUND = 2**63


class _PlainCallback:
    """What CallbackBody.model_validate(data) would give, for the common body pydantic accepts as is
    (only the model's own keys, scalar values, additionalProperties absent, null, "" or a flat object):
    the same `text()`, `password`, `amount` and `additionalProperties`, without pydantic."""

    __slots__ = ("_data", "additionalProperties")

    def __init__(self, data: dict, properties: dict | None):
        self._data = data
        self.additionalProperties = properties

    @property
    def password(self):
        return self._data.get("password")

    @property
    def amount(self):
        return self._data.get("amount")

    def text(self, name: str) -> str | None:
        value = self._data.get(name)
        if value is None or value.__class__ is bool:
            return None
        text = str(value).strip()
        return text or None


def _plain_callback(data: dict) -> _PlainCallback | None:
    """A _PlainCallback when `data` is certainly valid as it stands; None when pydantic must decide."""
    properties = None
    for key, value in data.items():
        if key not in _FIELD_NAMES:
            return None
        if key == "additionalProperties":
            if value is None or value == "":
                continue
            if value.__class__ is not dict:
                return None
            for item in value.values():
                if item.__class__ not in _PLAIN_SCALARS:
                    return None
            properties = value
        elif value.__class__ not in _PLAIN_SCALARS:
            return None
        elif value.__class__ is int and not -_INT_BOUND < value < _INT_BOUND:
            return None
        elif value.__class__ is str and not value.isascii():
            return None  # (lone surrogates and the like: pydantic's call)
    return _PlainCallback(data, properties)


def _callback(body: bytes, decoded: Decoded | None) -> CallbackBody | _PlainCallback:
    """parse_callback, with the common case validated without pydantic (same result, same errors)."""
    if decoded is None:
        decoded = decode_json(body)
    data = decoded.data
    if decoded.error is None and data.__class__ is dict:
        callback = _plain_callback(data)
        if callback is not None:
            return _required(callback)
    return parse_callback(body, decoded)


_REFERENCES = ("utilityref", "externalreference", "reference", "transid")


def _required(callback: CallbackBody | _PlainCallback) -> CallbackBody | _PlainCallback:
    """The callback, when it has the fields every callback must have: a status and a reference."""
    if callback.text("transactionstatus") is None:
        raise ParseError("schema: transactionstatus is missing")
    if not any(callback.text(name) for name in _REFERENCES) and not _hint(callback):
        raise ParseError("schema: no reference (utilityref, externalreference, reference, transid) present")
    return callback


def _hint(callback: CallbackBody | _PlainCallback) -> str | None:
    properties = callback.additionalProperties or {}
    value = properties.get("donation_id")
    if value is None or isinstance(value, (bool, dict, list)):
        return None
    return str(value).strip() or None


def extract_fields(body: bytes, decoded: Decoded | None = None) -> EventFields:
    """Typed fields of a callback body. Never raises: a bad body yields parse_error and whatever could be read.
    `decoded`, when given, is decode_json(body), so the JSON is not parsed again."""
    try:
        callback = _callback(body, decoded)
    except ParseError as exc:
        return EventFields(parse_error=str(exc))
    try:
        amount = parse_amount(callback.amount)
    except ParseError as exc:  # a fact, not a parse failure: a success without a usable amount ends in REVIEW
        amount, amount_error = None, str(exc)
    else:
        amount_error = None
    status_raw = callback.text("transactionstatus")
    msisdn = callback.text("msisdn")
    return EventFields(
        utilityref=_clip(callback.text("utilityref"), _LENGTHS["ref"]),
        externalreference=_clip(callback.text("externalreference"), _LENGTHS["ref"]),
        donation_hint=_clip(_hint(callback), _LENGTHS["hint"]),
        transaction_ref=_clip(callback.text("reference") or callback.text("transid"), _LENGTHS["ref"]),
        status_raw=_clip(status_raw, _LENGTHS["status_raw"]),
        status=normalise_status(status_raw),
        amount=amount,
        operator=_clip(callback.text("operator"), _LENGTHS["operator"]),
        msisdn=normalise_msisdn(msisdn) or _clip(msisdn, _LENGTHS["msisdn"]),
        password=None if callback.password is None else str(callback.password),
        signature=callback.text("signature"),
        amount_error=amount_error,
    )


def signed_message(body: bytes) -> bytes | None:
    """The bytes an RSA callback signature covers: utilityref+externalreference+transactionstatus+operator."""
    try:
        callback = parse_callback(body)
    except ParseError:
        return None
    parts = [callback.text(name) or "" for name in ("utilityref", "externalreference", "transactionstatus", "operator")]
    return "".join(parts).encode("utf-8")
