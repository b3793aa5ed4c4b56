"""Fuzzing 6b: the callback parser. pipeline.events.parse_callback raises nothing but ParseError;
extract_fields never raises, and what it extracts fits the typed columns and can be turned into
reference keys by the receiver and the fold without raising. Time grows at most linearly with the
body size for adversarial bodies (per-byte cost at two sizes, best of several runs, generous factor)."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import ParseError
from pipeline.events import extract_fields, parse_callback
from pipeline.fold import FoldEvent
from pipeline.resolution import DonationFacts, DonationIndex, decide, lookup_keys
from pipeline.store.events import Claim

LONG = os.environ.get("AZAMRECON_RELIABILITY_LONG") == "1"
EXAMPLES = 3000 if LONG else 400
COUNT = {"cases": 0}
KEYS = [
    "message",
    "user",
    "password",
    "clientId",
    "transactionstatus",
    "operator",
    "reference",
    "externalreference",
    "utilityref",
    "amount",
    "transid",
    "msisdn",
    "mnoreference",
    "submerchantAcc",
    "fspReferenceId",
    "signature",
    "additionalProperties",
]
NOW = datetime(2026, 1, 14, tzinfo=UTC)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.sampled_from(
        [
            "success",
            "FAILED",
            "",
            " ",
            "²",
            "٣",
            "１２",
            "1e999",
            "-1",
            "NaN",
            "Infinity",
            "0x10",
            "1,000.005",
            "\x00",
            "'; DROP TABLE payment_events;--",
        ]
    )
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
callbacks = st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=6), json_values, max_size=12
) | st.fixed_dictionaries(
    {
        "transactionstatus": json_scalars,
        "utilityref": json_scalars,
        "amount": json_scalars,
        "additionalProperties": st.dictionaries(st.just("donation_id"), json_values) | json_values,
    }
)


def exercise(body: bytes) -> None:
    COUNT["cases"] += 1
    try:
        parse_callback(body)
    except ParseError:
        pass
    fields = extract_fields(body)  # must not raise
    for name, limit in (
        ("utilityref", 255),
        ("externalreference", 255),
        ("transaction_ref", 255),
        ("donation_hint", 64),
        ("status_raw", 255),
        ("operator", 64),
        ("msisdn", 64),
    ):
        value = getattr(fields, name)
        assert value is None or (isinstance(value, str) and len(value) <= limit), (name, value)
        if value is not None:
            value.encode("utf-8")  # storable
    if fields.amount is not None:
        assert fields.amount >= 0 and fields.amount.as_tuple().exponent == -2
    claim = Claim.of(fields)  # what the receiver computes
    event = FoldEvent(
        1,
        NOW,
        "callback",
        "n/a",
        fields.status,
        fields.amount,
        fields.utilityref,
        fields.externalreference,
        fields.donation_hint,
        fields.transaction_ref,
        None,
        fields.parse_error,
        fields.status_raw,
        fields.msisdn,
        fields.operator,
    )
    assert lookup_keys(event) == claim.keys  # what pipeline.fold_batch.fold_batch computes for every batch
    index = DonationIndex()
    index.add(DonationFacts(1, "RHCI-DN-1-1", "tx-1", "255758285812", "Mpesa"))
    index.add(DonationFacts(2, None, None, None, None))
    assert decide(event, claim.keys, index) == decide(
        claim.event, claim.keys, index
    )  # and how both resolve the donation


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(body):
    exercise(body)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(callbacks)
def test_json_callbacks(data):
    exercise(json.dumps(data).encode())
    exercise(json.dumps(data, ensure_ascii=False).encode("utf-8", errors="surrogatepass"))


ADVERSARIAL = {
    "escapes": lambda n: b'{"transactionstatus":"success","utilityref":"' + b"\\u00e9" * (n // 6) + b'"}',
    "many keys": lambda n: (
        b"{" + b",".join(b'"k%d":1' % i for i in range(n // 9)) + b',"transactionstatus":"success","utilityref":"x"}'
    ),
    "deep nesting": lambda n: (
        b'{"transactionstatus":"success","utilityref":"x","additionalProperties":'
        + b'{"a":' * (n // 5)
        + b"1"
        + b"}" * (n // 5)
        + b"}"
    ),
    "long amount": lambda n: b'{"transactionstatus":"success","utilityref":"x","amount":"' + b"9" * n + b'"}',
    "long integer": lambda n: b'{"transactionstatus":"success","utilityref":"x","amount":' + b"9" * n + b"}",
    "msisdn spaces": lambda n: b'{"transactionstatus":"success","utilityref":"x","msisdn":"' + b" -" * (n // 2) + b'"}',
    "array": lambda n: b"[" + b"0," * (n // 2) + b"0]",
    "unterminated": lambda n: b'{"transactionstatus":"' + b"a" * n,
}


def per_byte(body: bytes, runs: int = 5) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        extract_fields(body)
        best = min(best, time.perf_counter() - start)
    return best / len(body)


def test_linear_time(figures):
    small, big = 16 * 1024, 256 * 1024  # 16x apart; the receiver never parses more than webhook.max_body_bytes (64 KiB)
    ratios = {}
    for name, make in ADVERSARIAL.items():
        ratio = per_byte(make(big)) / max(per_byte(make(small)), 1e-10)
        if ratio > 4:  # one retry against noise on a busy machine
            ratio = min(ratio, per_byte(make(big), 9) / max(per_byte(make(small), 9), 1e-10))
        ratios[name] = round(ratio, 2)
    figures.record(
        "6b. callback parser fuzz",
        f"Hypothesis: arbitrary bytes and JSON callbacks with hostile values; {len(ADVERSARIAL)} adversarial shapes at 16 KiB and 256 KiB",
        COUNT["cases"],
        {
            "exceptions other than ParseError": 0,
            "extract_fields raised": 0,
            "worst per-byte cost ratio 256K/16K (linear ≈ 1, bound 4)": max(ratios.values()),
        },
        command="pytest tests/reliability/test_fuzz_parser.py" + (" --long" if LONG else ""),
    )
    assert all(ratio < 4 for ratio in ratios.values()), ratios


def test_unicode_digit_donation_id_does_not_crash_receiver_or_fold():
    """Found by the fuzzers: '²' passes str.isdigit() but not int(); it used to raise in the receiver (500,
    callback not stored) and in the fold (every later batch failed: one forged callback stopped all folding)."""
    for hint in ("²", "٣", "１２", "1²"):
        body = json.dumps(
            {"transactionstatus": "success", "utilityref": "RHCI-DN-1-1", "additionalProperties": {"donation_id": hint}}
        ).encode()
        exercise(body)
