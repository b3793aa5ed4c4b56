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
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,}&]+)""",
    re.IGNORECASE,
)
# every _TEXT_PAIR match contains this; text without it skips the costly pattern (most log text)
_PAIR_HINT = re.compile(r"""(?:pass|secret|token|signature|api[-_]?key|authorization)[A-Za-z_-]*["']?\s*[:=]""", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def is_sensitive_key(key: Any) -> bool:
    return isinstance(key, str) and bool(_SENSITIVE.search(key))


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with every sensitive key's value replaced (empty/None values kept as is)."""
    if isinstance(value, dict):
        return {
            key: (REDACTED if is_sensitive_key(key) and item not in (None, "") else redact(item))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


_HARMLESS = {"None", "null", "''", '""', REDACTED, f"'{REDACTED}'", f'"{REDACTED}"'}


def _redact_pair(match: re.Match) -> str:
    """Keep the value's quoting (so a redacted dict repr stays a valid literal) and leave values that
    hide nothing (None, empty, already redacted) as they are."""
    value = match.group("value")
    if value in _HARMLESS:
        return match.group(0)
    quote = value[0] if value[0] in "'\"" and len(value) > 1 and value[-1] == value[0] else ""
    return f"{match.group('key')}{quote}{REDACTED}{quote}"


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Redact key=value / "key": "value" pairs, bearer tokens and any literal secret in free text."""
    if _PAIR_HINT.search(text):
        text = _TEXT_PAIR.sub(_redact_pair, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text


def redact_body(body: bytes, limit: int = 4096) -> str:
    """A log-safe rendering of a request body: a redacted Python-dict repr when it is JSON, else redacted text.

    The dict repr matches the legacy Django log (`Received Azam Pay callback: {...}`), so our own
    payments.log can be re-imported with `azamrecon events ingest`.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = None
    if isinstance(data, dict):
        rendered = repr(redact(data))
    else:
        rendered = redact_text(body[:limit].decode("utf-8", errors="replace"))
    rendered = rendered.replace("\n", "\\n").replace("\r", "\\r")
    return rendered if len(rendered) <= limit else rendered[:limit] + "…"
