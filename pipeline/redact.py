"""The one redaction function used by every log line: passwords, signatures, secrets, tokens and API keys."""
from __future__ import annotations

import json
import re
from typing import Any

REDACTED = "***"
_SENSITIVE = re.compile(r"pass(word)?|secret|token|signature|api[-_]?key|authorization|credential", re.IGNORECASE)
# key/value pairs in JSON or Python-repr text that could not be parsed. The look-behind only lets a key
# start at a word boundary: the same matches (a key's leading letters are absorbed by [A-Za-z_-]* anyway),
# without retrying the pattern at every position inside every word (2-3x faster on log lines).
_TEXT_PAIR = re.compile(
    r"""(?<![A-Za-z_-])(?P<key>["']?[A-Za-z_-]*(?:pass(?:word)?|secret|token|signature|api[-_]?key|authorization)[A-Za-z_-]*["']?\s*[:=]\s*)"""
    r"""(?P<value>(?:Bearer|Basic)\s+[^\s,}&'"]+|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,}&]+)""",
    re.IGNORECASE,
)
# every _TEXT_PAIR match contains this; text without it skips the costly pattern (most log text)
_PAIR_HINT = re.compile(r"""(?:pass|secret|token|signature|api[-_]?key|authorization)[A-Za-z_-]*["']?\s*[:=]""", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# one search that every _TEXT_PAIR or _BEARER match implies: most strings (a status, a reference) skip both
_ANY_HINT = re.compile(_PAIR_HINT.pattern + r"|bearer\s", re.IGNORECASE)
# every _ANY_HINT match contains one of these, in some letter case
_HINT_WORDS = ("pass", "secret", "token", "signature", "api", "authorization", "bearer")


def may_hold_secret(text: str) -> bool:
    """_ANY_HINT.search(text), answered without the regex for ASCII text that holds none of _HINT_WORDS
    (a few C substring searches, against a regex attempt at every position). Only ASCII: IGNORECASE also
    folds letters such as 'ſ' to 's', which str.lower() does not."""
    if text.isascii():
        lowered = text.lower()
        if not any(word in lowered for word in _HINT_WORDS):
            return False
    return _ANY_HINT.search(text) is not None


_KEY_CACHE: dict[str, bool] = {}  # callbacks repeat the same few keys; the cache is bounded below


def is_sensitive_key(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    known = _KEY_CACHE.get(key)
    if known is None:
        known = bool(_SENSITIVE.search(key))
        if len(_KEY_CACHE) < 4096 and len(key) <= 128:
            _KEY_CACHE[key] = known
    return known


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with every sensitive key's value replaced (empty/None values kept as is)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if item is None or isinstance(item, (bool, int, float)) and not is_sensitive_key(key):
                out[key] = item  # nothing to redact (the common case: null, numbers)
            elif is_sensitive_key(key) and item != "":
                out[key] = REDACTED
            elif isinstance(item, str):
                out[key] = redact_text(item)
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def needs_redaction(data: dict) -> bool:
    """False only when redact(data) would return an equal dict: every sensitive key is empty or None, and
    no string (at any depth of nested dicts) could hold a secret. One hint check over all the strings
    joined replaces one per string: a match inside a string is a match in the joined text (a match
    across the joins only sends the body down redact's path). The receiver logs every callback; the
    copy and the per-string checks were most of that line's cost."""
    strings: list[str] = []
    pending = [data]
    while pending:
        for key, item in pending.pop().items():
            if item is None or item == "":
                continue
            if is_sensitive_key(key):
                return True
            if isinstance(item, str):
                strings.append(item)
            elif isinstance(item, dict):
                pending.append(item)
            elif not isinstance(item, (bool, int, float)):
                return True  # a list or anything else: redact() decides
    return bool(strings) and may_hold_secret("\n".join(strings))


_HARMLESS = {"None", "null", "''", '""', REDACTED, f"'{REDACTED}'", f'"{REDACTED}"'}


def _redact_pair(match: re.Match) -> str:
    """Keep the value's quoting (so a redacted dict repr stays a valid literal) and leave values that
    hide nothing (None, empty, already redacted) as they are."""
    value = match.group("value")
    if value in _HARMLESS:
        return match.group(0)
    quote = value[0] if value[0] in "'\"" and len(value) > 1 and value[-1] == value[0] else ""
    return f"{match.group('key')}{quote}{REDACTED}{quote}"


def _redact_bearer(match: re.Match) -> str:
    return match.group(1) + REDACTED


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Redact key=value / "key": "value" pairs, bearer tokens and any literal secret in free text."""
    if may_hold_secret(text):
        if _PAIR_HINT.search(text):
            text = _TEXT_PAIR.sub(_redact_pair, text)
        text = _BEARER.sub(_redact_bearer, text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text


def redact_body(body: bytes, limit: int = 4096, decoded=None) -> str:
    """A log-safe rendering of a request body: a redacted Python-dict repr when it is JSON, else redacted text.

    The dict repr matches the legacy Django log (`Received Azam Pay callback: {...}`), so our own
    payments.log can be re-imported with `azamrecon events ingest`. `decoded` (pipeline.events.Decoded),
    when given, is the body's JSON already decoded; it is not parsed again.
    """
    if decoded is not None:
        data = decoded.data if decoded.error is None else None
    else:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            data = None
    if isinstance(data, dict):
        rendered = repr(redact(data) if needs_redaction(data) else data)
    else:
        rendered = redact_text(body[:limit].decode("utf-8", errors="replace"))
    rendered = rendered.replace("\n", "\\n").replace("\r", "\\r")
    return rendered if len(rendered) <= limit else rendered[:limit] + "…"
