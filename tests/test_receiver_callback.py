"""receiver.callback: the pure classification of a callback request and its answer, without a server."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from pipeline.auth import Authenticator
from pipeline.fold import Source
from pipeline.privacy import BodyRedactor, PrivacyKey
from pipeline.resolution import ReferenceFormat
from receiver.callback import (
    ANSWER_FAILED,
    ANSWER_FORBIDDEN,
    ANSWER_KNOWN,
    ANSWER_NO_SPACE,
    ANSWER_REFUSED,
    ANSWER_SPOOLED,
    ANSWER_UNKNOWN,
    ANSWER_UNVERIFIED,
    Outcome,
    Rules,
    answer_for,
    classify_callback,
    declared_over,
    decode_headers,
    is_json,
)
from receiver.writer import Written

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LIMIT = 64 * 1024
JSON = {"content-type": "application/json"}
GOOD = {
    "transactionstatus": "success",
    "utilityref": "RHCI-DN-7",
    "reference": "ref-1",
    "amount": "25000",
    "msisdn": "0712345678",
    "operator": "Airtel",
}


def rules(password: str = "", allowed: tuple[str, ...] = ()) -> Rules:
    return Rules(
        LIMIT,
        Authenticator(password=password, allowed=tuple(ipaddress.ip_network(a) for a in allowed)),
        ReferenceFormat("RHCI-DN-"),
        BodyRedactor(PrivacyKey(b"k" * 32), [password] if password else []),
    )


def body(**changes) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


# (case, body, over, headers, peer, rules kwargs, outcome, auth, typed, parse error contains)
CASES = [
    ("usable, no credential configured", body(), False, JSON, "10.0.0.1", {}, Outcome.CHECKED, "n/a", True, None),
    (
        "+json media type",
        body(),
        False,
        {"content-type": "application/vnd.x+json"},
        None,
        {},
        Outcome.CHECKED,
        "n/a",
        True,
        None,
    ),
    ("over the limit", b"{", True, JSON, None, {}, Outcome.TOO_LARGE, "n/a", False, "over the limit of 65536 bytes"),
    (
        "form encoded",
        b"a=b",
        False,
        {"content-type": "application/x-www-form-urlencoded"},
        None,
        {},
        Outcome.NOT_JSON,
        "n/a",
        False,
        "unsupported content type",
    ),
    ("no content type", body(), False, {}, None, {}, Outcome.NOT_JSON, "n/a", False, "unsupported content type ''"),
    ("not JSON", b"{nope", False, JSON, None, {}, Outcome.INVALID, "n/a", True, "invalid JSON"),
    (
        "no status",
        body(transactionstatus=None),
        False,
        JSON,
        None,
        {},
        Outcome.INVALID,
        "n/a",
        True,
        "transactionstatus is missing",
    ),
    (
        "bad JSON, credential required",
        b"[]",
        False,
        JSON,
        None,
        {"password": "s3cret!"},
        Outcome.INVALID,
        "unverified",
        True,
        "expected a JSON object",
    ),
    (
        "right password",
        body(password="s3cret!"),
        False,
        JSON,
        None,
        {"password": "s3cret!"},
        Outcome.CHECKED,
        "verified",
        True,
        None,
    ),
    (
        "wrong password",
        body(password="guess"),
        False,
        JSON,
        None,
        {"password": "s3cret!"},
        Outcome.FORBIDDEN,
        "failed",
        True,
        None,
    ),
    (
        "absent password",
        body(),
        False,
        JSON,
        None,
        {"password": "s3cret!"},
        Outcome.UNVERIFIED,
        "unverified",
        True,
        None,
    ),
    (
        "address allowed",
        body(),
        False,
        JSON,
        "10.0.0.9",
        {"allowed": ("10.0.0.0/24",)},
        Outcome.CHECKED,
        "n/a",
        True,
        None,
    ),
    (
        "address refused",
        body(),
        False,
        JSON,
        "192.0.2.1",
        {"allowed": ("10.0.0.0/24",)},
        Outcome.REFUSED,
        "failed",
        True,
        "refused: client address 192.0.2.1",
    ),
    (
        "refused and invalid",
        b"{",
        False,
        JSON,
        "192.0.2.1",
        {"allowed": ("10.0.0.0/24",)},
        Outcome.REFUSED,
        "failed",
        True,
        "not in webhook.allowed_ips; invalid JSON",
    ),
]


@pytest.mark.parametrize(
    ("raw", "over", "headers", "peer", "settings", "outcome", "auth", "typed", "error"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_classify_callback(raw, over, headers, peer, settings, outcome, auth, typed, error):
    request = classify_callback(raw, over, headers, peer, NOW, rules(**settings))
    assert request.outcome is outcome
    assert request.auth == auth
    assert request.typed is typed
    assert (request.keys is not None) is (outcome is Outcome.CHECKED)
    if error is None:
        assert request.fields.parse_error is None
    else:
        assert error in request.fields.parse_error
    row = request.row
    assert row["source"] == Source.CALLBACK
    assert row["auth"] == auth
    assert row["received_at"] == NOW
    assert row["parse_error"] == request.fields.parse_error
    assert row["remote_addr"] == peer


def test_classify_reads_the_fields_and_stores_the_body_without_its_password():
    request = classify_callback(body(password="s3cret!"), False, JSON, None, NOW, rules(password="s3cret!"))
    assert request.fields.amount == Decimal("25000.00")
    assert request.fields.msisdn == "255712345678"
    assert request.fields.utilityref == "RHCI-DN-7"
    assert request.decoded is not None and request.decoded.data["amount"] == "25000"
    assert b"s3cret!" not in request.row["body"]


def test_classify_takes_the_client_address_from_a_trusted_proxy():
    auth = Authenticator(
        allowed=(ipaddress.ip_network("198.51.100.0/24"),), trusted_proxies=(ipaddress.ip_network("10.0.0.1/32"),)
    )
    settings = Rules(LIMIT, auth, ReferenceFormat("RHCI-DN-"), BodyRedactor(PrivacyKey(b"k" * 32)))
    headers = {**JSON, "x-forwarded-for": "203.0.113.5, 198.51.100.7"}
    request = classify_callback(body(), False, headers, "10.0.0.1", NOW, settings)
    assert request.outcome is Outcome.CHECKED
    assert request.row["remote_addr"] == "198.51.100.7"


def _json(answer):
    return answer[0], json.loads(answer[1])


@pytest.mark.parametrize(
    ("outcome", "written", "expected"),
    [
        (Outcome.CHECKED, Written.KNOWN, ANSWER_KNOWN),
        (Outcome.CHECKED, Written.UNKNOWN, ANSWER_UNKNOWN),
        (Outcome.CHECKED, Written.SPOOLED, ANSWER_SPOOLED),
        (Outcome.CHECKED, Written.FAILED, ANSWER_FAILED),
        (Outcome.CHECKED, Written.NO_SPACE, ANSWER_NO_SPACE),
        (Outcome.CHECKED, Written.STORED, ANSWER_FAILED),  # cannot happen: a CHECKED row is looked up
        (Outcome.REFUSED, Written.STORED, ANSWER_REFUSED),
        (Outcome.FORBIDDEN, Written.STORED, ANSWER_FORBIDDEN),
        (Outcome.UNVERIFIED, Written.STORED, ANSWER_UNVERIFIED),
        (Outcome.UNVERIFIED, Written.SPOOLED, ANSWER_SPOOLED),
        (Outcome.FORBIDDEN, Written.NO_SPACE, ANSWER_NO_SPACE),
        (Outcome.TOO_LARGE, Written.FAILED, ANSWER_FAILED),
    ],
)
def test_answer_for_fixed_answers(outcome, written, expected):
    assert answer_for(outcome, written, LIMIT) is expected


def test_answer_for_fixed_answer_bodies():
    assert _json(ANSWER_KNOWN) == (200, {"status": "received"})
    assert _json(ANSWER_UNKNOWN) == (
        404,
        {"status": "not_found", "detail": "no donation matches this callback; it is stored"},
    )
    assert _json(ANSWER_UNVERIFIED)[0] == 202
    assert _json(ANSWER_FORBIDDEN) == (403, {"status": "forbidden", "detail": "credentials rejected; stored"})
    assert _json(ANSWER_REFUSED) == (403, {"status": "forbidden", "detail": "client address not allowed; stored"})
    assert _json(ANSWER_SPOOLED)[0] == 503 and _json(ANSWER_FAILED)[0] == 500 and _json(ANSWER_NO_SPACE)[0] == 507


def test_answer_for_answers_that_carry_details():
    assert _json(answer_for(Outcome.TOO_LARGE, Written.STORED, 100)) == (
        413,
        {"status": "too_large", "detail": "body over 100 bytes; the prefix is stored"},
    )
    assert _json(answer_for(Outcome.INVALID, Written.STORED, LIMIT, "schema: x")) == (
        400,
        {"status": "invalid", "detail": "schema: x"},
    )
    assert _json(answer_for(Outcome.NOT_JSON, Written.STORED, LIMIT)) == (
        415,
        {"status": "unsupported_media_type", "detail": "expected application/json; stored"},
    )
    assert answer_for(Outcome.INVALID, Written.STORED, LIMIT, "x")[1] == b'{"status":"invalid","detail":"x"}'


def test_headers_are_lower_cased_and_repeats_joined():
    raw = [(b"Content-Type", b"application/json"), (b"X-Forwarded-For", b"1.2.3.4"), (b"x-forwarded-for", b"\xe9")]
    assert decode_headers(raw) == {"content-type": "application/json", "x-forwarded-for": "1.2.3.4, \xe9"}


@pytest.mark.parametrize(
    ("declared", "over"),
    [("10", False), ("65536", False), ("65537", True), ("", False), ("-1", False), ("١٢٣٤٥٦٧", False)],
)
def test_declared_length_over_the_limit(declared, over):
    assert declared_over({"content-length": declared}, LIMIT) is over


@pytest.mark.parametrize(
    ("content_type", "json_"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/problem+json", True),
        ("text/json", False),
        ("application/jsonp", False),
        ("", False),
    ],
)
def test_is_json(content_type, json_):
    assert is_json(content_type) is json_
