"""Secrets and personal data at rest: the per-installation key, the secret marker, the retained msisdn.

docs/privacy.md is the data map. The rules here are pure (no database, no clock); the only I/O is
reading and creating the key file.

- A secret field of a body (pipeline.redact.is_secret_key: `password`, tokens, API keys; not the
  signature) is stored as `redacted:hmac-sha256:<32 hex>`, an HMAC-SHA256 of its value under the
  installation's key: whoever holds the key and a candidate password can tell whether it was the one
  sent (`events show` does), nobody can recover it, and a plain hash would fall to a dictionary.
- A phone number past its retention is stored as `hmac:<16 hex>:<last 3 digits>`, an HMAC of the
  number as stored, so equal numbers stay equal (the fold compares an event's msisdn with its
  donation's) and an operator can still match a donor's complaint by number.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets as token_source
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.events import Decoded, normalise_msisdn
from pipeline.json_out import dump_json, dump_plain_json
from pipeline.redact import SECRET_MARKER, is_redacted, is_secret_key

KEY_BYTES = 32
RETAINED_PREFIX = "hmac:"
# body keys that hold a phone number (compared case-insensitively); the guide's example repeats the
# msisdn in `user`, the checkout request names it accountNumber
MSISDN_KEYS = frozenset({"msisdn", "user", "accountnumber", "phone", "phonenumber", "mobile", "mobilenumber"})
_HEX_KEY = re.compile(r"[0-9a-f]{64}")

# HMAC inputs carry a purpose, so a secret's marker and a number's hash never coincide
_SECRET_PURPOSE = b"secret\x00"
_MSISDN_PURPOSE = b"msisdn\x00"
_FINGERPRINT_PURPOSE = b"fingerprint\x00"


class PrivacyKey:
    """The installation's HMAC key. Lives in a file (privacy.key_file), never in the database."""

    __slots__ = ("_secret", "path")

    def __init__(self, secret: bytes, path: Path | None = None):
        if len(secret) != KEY_BYTES:
            raise ValueError(f"a privacy key is {KEY_BYTES} bytes")
        self._secret = secret
        self.path = path

    def digest(self, purpose: bytes, text: str) -> str:
        return hmac.digest(
            self._secret, purpose + text.encode("utf-8", errors="surrogatepass"), "sha256"
        ).hex()  # one-shot: OpenSSL's C path

    @property
    def fingerprint(self) -> str:
        """Names the key without revealing it: recorded in the database, so a run with another key is refused."""
        return self.digest(_FINGERPRINT_PURPOSE, "azamrecon")[:16]

    def __repr__(self) -> str:  # never the secret
        return f"PrivacyKey(fingerprint={self.fingerprint})"


def load_key(path: str | Path, create: bool = True) -> PrivacyKey:
    """The key in `path` (64 hex characters). Missing: created, mode 0600, when `create` (azamrecon init does
    it; any other process that needs it first does too, rather than store a secret in clear), else ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        if not create:
            raise ConfigError(
                f"invalid config value for privacy.key_file: {path} does not exist (run `azamrecon init`)"
            ) from None
        return _create_key(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"invalid config value for privacy.key_file: cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if not _HEX_KEY.fullmatch(text):
        raise ConfigError(
            f"invalid config value for privacy.key_file: {path} does not hold a key (64 lowercase hex characters)"
        )
    return PrivacyKey(bytes.fromhex(text), path)


def _create_key(path: Path) -> PrivacyKey:
    """Write a new key atomically: a temporary file linked into place, so two processes creating it at once
    both end up with the one that won, never with a half-written file."""
    secret = token_source.token_bytes(KEY_BYTES)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{token_source.token_hex(4)}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (secret.hex() + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return load_key(path, create=False)
        finally:
            os.unlink(temporary)
    except OSError as exc:
        raise ConfigError(
            f"invalid config value for privacy.key_file: cannot create {path}: {exc.strerror or exc}"
        ) from None
    return PrivacyKey(secret, path)


# --- secrets ------------------------------------------------------------------------------------


def secret_text(value: Any) -> str:
    """The text a secret's marker is computed over: a string as it is (as pipeline.auth compares it), any
    other JSON value as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def secret_marker(key: PrivacyKey, value: Any) -> str:
    return SECRET_MARKER + key.digest(_SECRET_PURPOSE, secret_text(value))[:32]


def which_secret(key: PrivacyKey, marker: Any, candidates: Iterable[tuple[str, str]]) -> str | None:
    """The name of the candidate (name, secret) whose marker `marker` is; None when none is."""
    if not isinstance(marker, str) or not marker.startswith(SECRET_MARKER):
        return None
    for name, secret in candidates:
        if secret and hmac.compare_digest(secret_marker(key, secret), marker):
            return name
    return None


def _is_plain_secret(key: Any, value: Any) -> bool:
    """A value of a secret field that is still in clear (empty values and booleans hide nothing)."""
    return (
        is_secret_key(key)
        and value is not None
        and value != ""
        and not isinstance(value, bool)
        and not is_redacted(value)
    )


_CONTAINERS = (dict, list)


def _has_secret(value: Any) -> bool:
    """Any _is_plain_secret field at any depth. Runs for every callback the receiver takes: the key test
    (cached) comes first, the value tests only for the one or two secret keys a callback has."""
    pending = [value]
    while pending:
        item = pending.pop()
        if item.__class__ is dict:
            for key, child in item.items():
                if is_secret_key(key):
                    if _is_plain_secret(key, child):
                        return True
                elif child.__class__ in _CONTAINERS:
                    pending.append(child)
        elif item.__class__ is list:
            pending.extend(child for child in item if child.__class__ in _CONTAINERS)
    return False


def _without_secrets(mark: Callable[[Any], str], value: Any, floats: list) -> Any:
    """A copy of a dict or list with its secrets replaced by markers; appends to `floats` when it holds a
    float (dump_json must then write the numbers itself)."""
    if value.__class__ is list:
        items = enumerate(value)
        out: Any = [None] * len(value)
    else:
        items = value.items()
        out = {}
    for name, child in items:
        if is_secret_key(name) and _is_plain_secret(name, child):
            child = mark(child)
        elif child.__class__ in _CONTAINERS:
            child = _without_secrets(mark, child, floats)
        elif isinstance(child, float):
            floats.append(child)
        out[name] = child
    return out


class BodyRedactor:
    """What becomes of a body before it is stored (receiver, spool replay, log import): its secret fields
    replaced by markers. `secrets` are the configured webhook passwords, replaced wherever they appear in
    a body that is not a JSON object or array (a truncated or form-encoded one has no fields to go by)."""

    def __init__(self, key: PrivacyKey, secrets: Iterable[str] = ()):
        self.key = key
        # shorter literals would match inside ordinary text (the log scrubber draws the same line)
        self._literals = tuple(
            (secret.encode("utf-8"), secret_marker(key, secret).encode("ascii"))
            for secret in secrets
            if secret and len(secret) >= 4
        )
        self._markers: dict[str, str] = {}  # every callback carries the same password: its HMAC once

    def _mark(self, value: Any) -> str:
        if value.__class__ is not str:
            return secret_marker(self.key, value)
        marker = self._markers.get(value)
        if marker is None:
            marker = secret_marker(self.key, value)
            if len(self._markers) < 64:  # bounded: a forger sending new passwords gains nothing
                self._markers[value] = marker
        return marker

    def stored_body(self, body: bytes, decoded: Decoded | None) -> bytes | None:
        """The bytes to store instead of `body`, or None when `body` holds no secret (the common case: no
        copy, no encoding). `decoded` is the body's JSON as the caller already decoded it; None means the
        body is not read as JSON. Only a body with a secret is written again: compact JSON, numbers as
        they were written (a JsonNumber keeps its text)."""
        data = decoded.data if decoded is not None and decoded.error is None else None
        if isinstance(data, (dict, list)):
            if not _has_secret(data):
                return None
            floats: list = []
            redacted = _without_secrets(self._mark, data, floats)
            return dump_json(redacted) if floats else dump_plain_json(redacted)
        replaced = body
        for literal, marker in self._literals:  # (bytes.replace returns the same object when nothing matched)
            if literal in replaced:
                replaced = replaced.replace(literal, marker)
        return None if replaced is body else replaced

    def has_literal(self, body: bytes) -> bool:
        """A configured password appears in `body` as written."""
        return any(literal in body for literal, _ in self._literals)


# --- phone numbers ------------------------------------------------------------------------------


def is_retained(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(RETAINED_PREFIX)


def retained_msisdn(key: PrivacyKey, value: str) -> str:
    """`hmac:<16 hex>:<last 3 digits>` for a stored number (already normalised where it could be: a typed
    column, a donation, or a body's value through body_number). The same input always gives the same
    output, so numbers that were equal stay equal."""
    digits = "".join(char for char in value if char.isascii() and char.isdigit())
    return f"{RETAINED_PREFIX}{key.digest(_MSISDN_PURPOSE, value)[:16]}:{digits[-3:]}"


def body_number(name: Any, value: Any, known: frozenset[str] = frozenset()) -> str | None:
    """The number a body field holds, as a typed column would store it, or None when it holds none: an
    `msisdn` field whatever its shape; another MSISDN_KEYS field (`user`, ...) when it is a Tanzanian
    mobile number; any field whose number is one of `known` (the row's own msisdn)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value).strip()
    if not text or is_retained(text) or is_redacted(text):
        return None
    normalised = normalise_msisdn(text)
    field = name.casefold() if isinstance(name, str) else ""
    if field == "msisdn":
        return normalised or text[:64]
    if normalised is not None and (field in MSISDN_KEYS or normalised in known):
        return normalised
    return None


def numbers_in(value: Any, known: frozenset[str] = frozenset()) -> set[str]:
    """Every number body_number finds in a decoded body, at any depth."""
    found: set[str] = set()
    pending = [value]
    while pending:
        item = pending.pop()
        pairs = (
            item.items()
            if isinstance(item, dict)
            else ((None, child) for child in item)
            if isinstance(item, list)
            else ()
        )
        for name, child in pairs:
            if isinstance(child, (dict, list)):
                pending.append(child)
            else:
                number = body_number(name, child, known)
                if number is not None:
                    found.add(number)
    return found


def without_numbers(
    key: PrivacyKey, value: Any, known: frozenset[str] = frozenset(), only: frozenset[str] | None = None
) -> Any:
    """A copy of a decoded body with every number body_number finds (or only those in `only`) replaced by
    retained_msisdn."""
    if isinstance(value, dict):
        out = {}
        for name, child in value.items():
            if isinstance(child, (dict, list)):
                out[name] = without_numbers(key, child, known, only)
            else:
                number = body_number(name, child, known)
                out[name] = (
                    child
                    if number is None or (only is not None and number not in only)
                    else retained_msisdn(key, number)
                )
        return out
    if isinstance(value, list):
        return [
            without_numbers(key, child, known, only) if isinstance(child, (dict, list)) else child for child in value
        ]
    return value


# A Tanzanian mobile number written anywhere in text (pipeline.events.MSISDN_PATTERN, not inside a longer
# run of digits). Only for bodies with no fields to go by: a form post, truncated JSON.
_NUMBER_IN_TEXT = re.compile(rb"(?<![0-9])(?:\+?255|0)?(?:6[1-9]|7[1-8])[0-9]{7}(?![0-9])")


def text_without_numbers(key: PrivacyKey, body: bytes, only: frozenset[str] | None = None) -> bytes | None:
    """A body that is not JSON with every Tanzanian mobile number in it (or only those in `only`) replaced by
    retained_msisdn; None when it has none."""

    def replace(match: re.Match) -> bytes:
        number = normalise_msisdn(match.group(0).decode("ascii"))
        if number is None or (only is not None and number not in only):
            return match.group(0)
        return retained_msisdn(key, number).encode("ascii")

    replaced = _NUMBER_IN_TEXT.sub(replace, body)
    return None if replaced == body else replaced


def redactor_for(config) -> BodyRedactor:
    """The BodyRedactor of a pipeline.config.Config: its key file and its webhook passwords."""
    return BodyRedactor(load_key(config.privacy.key_file), [secret for _, secret in config.webhook.passwords()])
