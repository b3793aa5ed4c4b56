"""The one redaction function used by every log line: passwords, signatures, secrets, tokens and API keys."""

from __future__ import annotations

import json
import re
from typing import Any

REDACTED = "***"
# What a secret becomes in a stored body (pipeline.privacy.secret_marker): this prefix, then a keyed hash.
SECRET_MARKER = "redacted:hmac-sha256:"
# Key words of secret fields. A signature is hidden from logs but is no secret at rest (it proves the
# body; whoever reads it can forge nothing), so it is not one of the words stored bodies lose.
_SECRET_WORDS = r"pass(word)?|secret|token|api[-_]?key|authorization|credential"
_SENSITIVE = re.compile(_SECRET_WORDS + r"|signature", re.IGNORECASE)
_SECRET = re.compile(_SECRET_WORDS, re.IGNORECASE)
# key/value pairs in JSON or Python-repr text that could not be parsed. The look-behind only lets a key
# start at a word boundary: the same matches (a key's leading letters are absorbed by [A-Za-z_-]* anyway),
# without retrying the pattern at every position inside every word (log lines are scanned on every write).
_TEXT_PAIR = re.compile(
    r"""(?<![A-Za-z_-])(?P<key>["']?[A-Za-z_-]*(?:pass(?:word)?|secret|token|signature|api[-_]?key|authorization)[A-Za-z_-]*["']?\s*[:=]\s*)"""
    r"""(?P<value>(?:Bearer|Basic)\s+[^\s,}&'"]+|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,}&]+)""",
    re.IGNORECASE,
)
# every _TEXT_PAIR match contains this; text without it skips the costly pattern (most log text)
_PAIR_HINT = re.compile(
    r"""(?:pass|secret|token|signature|api[-_]?key|authorization)[A-Za-z_-]*["']?\s*[:=]""", re.IGNORECASE
)
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


def _key_matcher(pattern: re.Pattern):
    """pattern.search(key) for dict keys, cached: callbacks repeat the same few keys, and the receiver asks
    for every key of every callback. The cache is bounded (4,096 keys of up to 128 characters)."""
    cache: dict[str, bool] = {}

    def matches(key: Any) -> bool:
        if not isinstance(key, str):
            return False
        known = cache.get(key)
        if known is None:
            known = bool(pattern.search(key))
            if len(cache) < 4096 and len(key) <= 128:
                cache[key] = known
        return known

    return matches


is_sensitive_key = _key_matcher(_SENSITIVE)
# a field whose value never reaches storage (pipeline.privacy): every sensitive key but a signature
is_secret_key = _key_matcher(_SECRET)


def is_redacted(value: Any) -> bool:
    """A value that already hides its secret: the log's '***' or a stored body's marker."""
    return value == REDACTED or (isinstance(value, str) and value.startswith(SECRET_MARKER))


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with every sensitive key's value replaced (empty/None values kept as is)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if item is None or isinstance(item, (bool, int, float)) and not is_sensitive_key(key):
                out[key] = item  # nothing to redact (the common case: null, numbers)
            elif is_sensitive_key(key) and item != "":
                # a stored body's marker is a keyed hash, shown so an operator can tell which password was used
                out[key] = item if is_redacted(item) else REDACTED
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


MAX_LOG_DEPTH = 32  # a body nested deeper is logged as text: repr() and redact() recurse once per level
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """Text for one log line: every character that is not printable (newlines, carriage returns, other
    control characters, ANSI escapes, Unicode line separators) written as an escape. A value in a log
    line is data: a newline in a callback's utilityref must not start a line the guide's greps count."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _ESCAPES.get(ch) or ascii(ch)[1:-1] for ch in text)


# the webhook guide's phrases that its greps and alerts count (docs/deploy.md, "Logs and the guide's greps")
GUIDE_PHRASES = (
    "Received Azam Pay callback",
    "Processed callback",
    "completed successfully",
    "Updated patient funding",
    "payment failed",
    "Error processing Azam Pay callback",
    "Could not find donation",
    "fold failed",
    "fold recovered",
)
_PHRASES = re.compile("|".join(re.escape(phrase) for phrase in GUIDE_PHRASES), re.IGNORECASE)


def log_value(text: str) -> str:
    """A value someone sent, made safe to put in a log line: escape_controls, and a guide phrase inside it
    gets its first space written `\\x20`, so a callback cannot add to what the guide's greps count. In the
    callback line's dict repr that escape sits inside a string literal: a re-import reads the same value."""
    text = escape_controls(text)
    if _PHRASES.search(text) is None:
        return text
    return _PHRASES.sub(lambda match: match.group(0).replace(" ", "\\x20", 1), text)


def nested_within(data: Any, limit: int) -> bool:
    """Whether dicts and lists in `data` nest at most `limit` levels (checked without recursion)."""
    pending = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if depth > limit:
            return False
        children = value.values() if isinstance(value, dict) else value
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return True


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
    rendered = None
    if isinstance(data, dict):
        if nested_within(data, MAX_LOG_DEPTH):
            try:
                rendered = repr(redact(data) if needs_redaction(data) else data)
            except (RecursionError, ValueError):  # never lose the line: fall back to the text below
                rendered = None
        if rendered is None:
            rendered = f"[nested deeper than {MAX_LOG_DEPTH} levels, shown as text] "
            rendered += redact_text(body[:limit].decode("utf-8", errors="replace"))
    else:
        rendered = redact_text(body[:limit].decode("utf-8", errors="replace"))
    rendered = log_value(rendered)
    return rendered if len(rendered) <= limit else rendered[:limit] + "…"
