"""Callback parsing: tolerant of every recorded payload; status, msisdn and amount normalisation; redaction."""

import json
from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.errors import ParseError
from pipeline.events import extract_fields, normalise_msisdn, normalise_status, parse_amount, parse_callback
from pipeline.redact import redact, redact_body, redact_text
from tests.conftest import FIXTURES, fixture_bytes


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("callback_*.json")))
def test_every_recorded_callback_parses(name):
    fields = extract_fields(fixture_bytes(name))
    assert fields.parse_error is None
    assert fields.utilityref and fields.utilityref.startswith("RHCI-DN-")
    assert fields.status in ("SUCCESS", "FAILED")
    assert isinstance(fields.amount, Decimal) and fields.amount > 0
    assert fields.msisdn.startswith("255") and len(fields.msisdn) == 12


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("success", "SUCCESS"),
        ("SUCCESSFUL", "SUCCESS"),
        ("Completed", "SUCCESS"),
        ("failure", "FAILED"),
        ("FAILED", "FAILED"),
        ("fail", "FAILED"),
        ("cancelled", "CANCELLED"),
        ("Canceled", "CANCELLED"),
        (" success ", "SUCCESS"),
        ("pending", "UNKNOWN"),
        ("REVERSAL_QUEUED", "UNKNOWN"),
        ("", "UNKNOWN"),
        (None, "UNKNOWN"),
        (1, "UNKNOWN"),
    ],
)
def test_status_normalisation(raw, expected):
    assert normalise_status(raw) == expected


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("0628630936", "255628630936"),
        ("255758285812", "255758285812"),
        ("+255 758 285 812", "255758285812"),
        ("758285812", "255758285812"),
        ("0600000000", None),
        ("0798123456", None),
        ("12345", None),
        (None, None),
        ("255-688-123456", "255688123456"),
    ],
)
def test_msisdn_normalisation(raw, expected):
    assert normalise_msisdn(raw) == expected


def test_amounts_are_decimal_never_float():
    assert parse_amount("25000") == Decimal("25000.00")
    assert parse_amount(25000) == Decimal("25000.00")
    assert parse_amount("1000.5") == Decimal("1000.50")
    assert parse_amount(None) is None and parse_amount("") is None
    # one grammar: ASCII digits, an optional single ".", at most two decimals
    for bad in (
        "abc",
        "NaN",
        "-5",
        "+5",
        "1e20",
        "1e3",
        True,
        "1000.004",
        "1000.005",
        "1000.000",
        1000.004,
        "1,000.5",
        "10,00",
        "1_000",
        "１０００",
        "٣",
        "1.2.3",
        ".5",
        "5.",
        "Infinity",
        "1000000000000",
        " 1000",
        "1000 ",
        [1],
        {"a": 1},
    ):
        with pytest.raises(ParseError):
            parse_amount(bad)


def test_a_json_number_amount_is_read_from_its_text_not_its_float():
    """25000.000000000001 is 25000.0 as a float: it must not match a charge of 25000."""
    body = b'{"transactionstatus": "success", "utilityref": "RHCI-DN-1-20260101000000", "amount": 25000.000000000001}'
    fields = extract_fields(body)
    assert (
        fields.amount is None
        and fields.amount_error == "amount is not in the form 12345 or 12345.67: '25000.000000000001'"
    )
    assert fields.parse_error is None and fields.utilityref == "RHCI-DN-1-20260101000000"  # the other fields are kept
    nested = extract_fields(
        body[:-1] + b', "additionalProperties": {"a": {"b": 1}}}'
    )  # pydantic's path, not the plain one
    assert nested.amount is None and nested.amount_error == fields.amount_error and nested.parse_error is None
    exact = extract_fields(body.replace(b"25000.000000000001", b"25000.50"))
    assert exact.parse_error is None and exact.amount == Decimal("25000.50")
    assert "'amount': 25000.5}" in redact_body(
        body.replace(b"25000.000000000001", b"25000.50")
    )  # the log line's repr is unchanged


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 1.5, "b": [1, "x", null]}',
        '{"a": 1}'.encode("utf-16"),
        b'{"a": "\\ud800"}',
        b"",
        b"[1,2]",
        b'{"a":',
        b"\xff\xfe{",
    ],
)
def test_decode_json_agrees_with_json_loads(body):
    from pipeline.events import decode_json

    decoded = decode_json(body)
    try:
        expected = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        assert decoded.data is None and decoded.error == f"invalid JSON: {str(exc)[:120]}"
    else:
        assert decoded.error is None and decoded.data == expected


def test_missing_null_and_extra_keys_are_tolerated():
    body = json.dumps(
        {
            "transactionstatus": "success",
            "utilityref": "RHCI-DN-1-20260101000000",
            "amount": None,
            "brandNewField": {"x": 1},
            "additionalProperties": "",
            "submerchantAcc": None,
        }
    ).encode()
    fields = extract_fields(body)
    assert fields.parse_error is None and fields.amount is None and fields.donation_hint is None


@pytest.mark.parametrize(
    "body,error",
    [
        (b"{not json", "invalid JSON"),
        (b"[1,2]", "expected a JSON object"),
        (b'{"utilityref": "x"}', "transactionstatus"),
        (b'{"transactionstatus": "success"}', "no reference"),
        (b'{"transactionstatus": {"nested": 1}, "utilityref": "x"}', "schema"),
        (b"\xff\xfe", "invalid JSON"),
    ],
)
def test_bad_bodies_give_a_parse_error_and_nothing_else(body, error):
    fields = extract_fields(body)
    assert error in fields.parse_error
    with pytest.raises(ParseError):
        parse_callback(body)


def test_an_unusable_amount_keeps_every_other_typed_field():
    body = b'{"transactionstatus": "success", "utilityref": "RHCI-DN-7-20260101000000", "amount": "abc", "msisdn": "0758285812", "operator": "Mpesa"}'
    fields = extract_fields(body)
    assert fields.parse_error is None and fields.amount is None and "amount" in fields.amount_error
    assert (fields.utilityref, fields.status, fields.msisdn, fields.operator) == (
        "RHCI-DN-7-20260101000000",
        "SUCCESS",
        "255758285812",
        "Mpesa",
    )


def test_donation_id_hint_and_typed_columns_are_clipped():
    body = json.dumps(
        {"transactionstatus": "success", "utilityref": "R" * 1000, "additionalProperties": {"donation_id": 45}}
    ).encode()
    fields = extract_fields(body)
    assert len(fields.utilityref) == 255 and fields.donation_hint == "45"


def test_redaction_covers_passwords_signatures_secrets_and_tokens():
    data = {
        "password": "v-pw",
        "signature": "v-sig",
        "clientSecret": "v-cs",
        "accessToken": "v-at",
        "X-API-KEY": "v-key",
        "user": "keep",
        "nested": [{"token": "v-t2"}],
        "empty": {"password": None},
    }
    redacted = redact(data)
    flat = json.dumps(redacted)
    for secret in ("v-pw", "v-sig", "v-cs", "v-at", "v-key", "v-t2"):
        assert secret not in flat
    assert redacted["user"] == "keep" and redacted["empty"]["password"] is None
    assert "v-pw" not in redact_body(json.dumps(data).encode())
    header = redact_text("password=abc&x=1 Authorization: Bearer eyJ.abc")
    assert header.startswith("password=***&x=1 Authorization: ") and "eyJ" not in header and "abc" not in header
    assert "eyJ" not in redact_text("calling with Bearer eyJ.abc now")
    assert redact_text("leaked literal-secret here", secrets=("literal-secret",)) == "leaked *** here"


def test_tracebacks_in_logs_never_show_local_variables(tmp_path):
    """A job's unexpected error is logged with its traceback; the variables in it (headers with the
    Bearer token, the API key) must not be printed next to it."""
    from loguru import logger

    from pipeline.logs import configure_logging
    from pipeline.sections import LoggingConfig

    configure_logging(LoggingConfig(dir=str(tmp_path)), stderr_level=None)
    try:

        def call_azampay():
            headers = {"Authorization": "Bearer token-value-123", "X-API-KEY": "key-value-456"}  # noqa: F841
            raise UnicodeEncodeError("latin-1", "x", 0, 1, "ordinal not in range")

        try:
            call_azampay()
        except UnicodeEncodeError:
            logger.exception("poll failed")
    finally:
        logger.remove()
    text = (tmp_path / "errors.log").read_text()
    assert "poll failed" in text and "UnicodeEncodeError" in text
    assert "token-value-123" not in text and "key-value-456" not in text


# -- the redaction fast path (pipeline.redact.needs_redaction / may_hold_secret) --------------------------

_KEYS = st.sampled_from(
    ["password", "user", "token", "msisdn", "api_key", "note", "Authorization", "reference"]
) | st.text(max_size=12)
_WORDY = st.sampled_from(
    ["password=hunter2", "Bearer abc.def", "api-key: 1", "paſſword=x", "token", "secret:", "ok", "", "APIKEY=9"]
)
_VALUES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30) | _WORDY


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=60) | _WORDY)
@example("paſſword=x")  # IGNORECASE folds 'ſ' to 's'; str.lower() does not
@example("xAPI_KEY:")
def test_may_hold_secret_is_the_hint_regex(text):
    from pipeline.redact import _ANY_HINT, may_hold_secret

    assert may_hold_secret(text) == (_ANY_HINT.search(text) is not None)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        _KEYS, _VALUES | st.dictionaries(_KEYS, _VALUES, max_size=4) | st.lists(_VALUES, max_size=3), max_size=8
    )
)
@example({"password": None, "user": "x", "additionalProperties": {}})
@example({"note": "pass", "other": "word=1"})  # a hint only across the join: the slow path, same answer
def test_a_body_that_needs_no_redaction_is_logged_as_redact_would(data):
    from pipeline.redact import needs_redaction

    if not needs_redaction(data):
        assert redact(data) == data
    body = json.dumps(data).encode()
    expected = repr(redact(json.loads(body))).replace("\n", "\\n").replace("\r", "\\r")  # the slow path, always
    assert redact_body(body) == (expected if len(expected) <= 4096 else expected[:4096] + "…")
