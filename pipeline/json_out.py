"""JSON written back as it was read: the bytes a rewritten body is stored as (pipeline.privacy).

A value decoded by pipeline.events.decode_json keeps each number's text (JsonNumber), so a body whose
secrets or numbers are replaced keeps every amount exactly as the sender wrote it.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any

from pipeline.events import JsonNumber


def dump_json(value: Any) -> bytes:
    """Compact JSON of a value decoded by pipeline.events.decode_json. Unlike json.dumps, a JsonNumber is
    written as the text it was read from (25000.000000000001 stays that, not 25000.0: parse_amount reads
    that text when the spool is replayed). Lone surrogates are written as \\u escapes."""
    parts: list[str] = []
    try:
        _dump(value, parts, encode_basestring)
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError:
        parts.clear()
        _dump(value, parts, encode_basestring_ascii)
        return "".join(parts).encode("ascii")


_PLAIN = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # one encoder, not one per call
_PLAIN_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def dump_plain_json(value: Any) -> bytes:
    """dump_json for a value without floats, through json's C encoder: the receiver writes every body that
    holds a secret again before it stores it."""
    try:
        return _PLAIN.encode(value).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return _PLAIN_ASCII.encode(value).encode("ascii")


def _dump(value: Any, out: list[str], encode) -> None:
    if isinstance(value, str):
        out.append(encode(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, JsonNumber):
        out.append(value.text)
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        out.append(json.dumps(value))  # NaN and Infinity as the decoder accepted them
    elif isinstance(value, dict):
        out.append("{")
        for index, (name, child) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(encode(str(name)))
            out.append(":")
            _dump(child, out, encode)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for index, child in enumerate(value):
            if index:
                out.append(",")
            _dump(child, out, encode)
        out.append("]")
    else:
        raise TypeError(f"not a decoded JSON value: {type(value).__name__}")
