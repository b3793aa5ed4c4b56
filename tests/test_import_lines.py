"""Reading a callback out of an imported log line (pipeline.import_lines): unsafe bodies, timestamps, offsets."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.import_lines import LineError, parse_line, parse_offset, parse_timestamp


def utc(*parts) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "2025-12-19 12:00:00,000 Received Azam Pay callback: {'a': __import__('os').system('touch /tmp/pwned-azamrecon')}",
        "2025-12-19 12:00:00,000 Received Azam Pay callback: " + "{'a': " * 40 + "1" + "}" * 40,
        "2025-12-19 12:00:00,000 Received Azam Pay callback: {'a': {1, 2}}",
        "2025-12-19 12:00:00,000 Received Azam Pay callback: {('t', 'u'): 1}",
        "Received Azam Pay callback: {'transactionstatus': 'success'}",  # no timestamp
        "2025-12-19 12:00:00,000 Received Azam Pay callback: {'transactionstatus': 'success'…",  # our own truncation mark
    ],
)
def test_unsafe_or_unusable_bodies_are_errors(text, now):
    with pytest.raises(LineError):
        parse_line(text, now)
    assert not Path("/tmp/pwned-azamrecon").exists()


@pytest.mark.parametrize(
    "line,expected",
    [
        ("INFO 2025-12-19 12:00:00,123 views 1 2 x", utc(2025, 12, 19, 12, 0, 0, 123000)),
        ("2025-12-19 12:00:00.123 | INFO | receiver | x", utc(2025, 12, 19, 12, 0, 0, 123000)),
        ("2025-12-19T12:00:00.123456Z x", utc(2025, 12, 19, 12, 0, 0, 123456)),
        ("2025-12-19T15:00:00+03:00 x", utc(2025, 12, 19, 12, 0, 0)),
        ("[19/Dec/2025 12:00:00] INFO x", utc(2025, 12, 19, 12, 0, 0)),
        ("1.2.3.4 - - [19/Dec/2025:15:00:00 +0300] x", utc(2025, 12, 19, 12, 0, 0)),
        ("no time here", None),
    ],
)
def test_timestamp_formats(line, expected):
    assert parse_timestamp(line) == expected


def test_a_naive_timestamp_is_taken_at_the_given_offset_and_an_explicit_one_is_kept():
    dar = parse_offset("+03:00")
    assert parse_timestamp("INFO 2025-12-19 15:00:00,123 views 1 2 x", dar) == utc(2025, 12, 19, 12, 0, 0, 123000)
    assert parse_timestamp("2025-12-19T15:00:00-02:00 x", dar) == utc(2025, 12, 19, 17, 0, 0)  # its own offset wins
    assert parse_offset("+0300") == dar and parse_offset("Z") == UTC
    for bad in ("3", "+3:00", "+24:00", "+03:60", "EAT", ""):
        with pytest.raises(InputError, match="UTC offset"):
            parse_offset(bad)
