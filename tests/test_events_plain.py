"""pipeline.events._PlainCallback (the receiver's pydantic-free path for the common body) gives exactly what
the pydantic model it bypasses gives: the same fields, or the same error, for any body."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline import events
from pipeline.errors import ParseError
from pipeline.events import CallbackBody, decode_json, extract_fields

FIELDS = sorted(CallbackBody.model_fields)
SCALAR_FIELDS = [name for name in FIELDS if name != "additionalProperties"]

texts = st.one_of(
    st.sampled_from(
        ["", " ", "success", " SUCCESS ", "failed", "RHCI-DN-7", "25000", "25000.50", "0712345678", "x" * 300]
    ),
    st.text(max_size=12),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    texts,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, -(2**63), 25000]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([25000.5, 1e20, 0.1, 25000.000000000001, -0.0]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=2),
    st.dictionaries(st.text(max_size=4), scalars, max_size=2),
)
properties = st.one_of(
    st.none(),
    st.just(""),
    st.sampled_from(['{"donation_id": 7}', "not json", "[1]", '{"donation_id": "RHCI-DN-9"}']),
    st.dictionaries(st.sampled_from(["donation_id", "x", "nested"]), values, max_size=3),
    st.lists(scalars, max_size=1),
    scalars,
)
ascii_texts = st.one_of(texts.filter(str.isascii), st.text(alphabet=string.printable, max_size=12))
ascii_scalars = st.one_of(
    st.none(),
    st.booleans(),
    ascii_texts,
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False, allow_infinity=False),
)
plain_bodies = st.fixed_dictionaries(  # the common body, which the plain path takes: checked field by field
    {
        "transactionstatus": st.one_of(st.sampled_from(["success", "FAILED", " cancelled ", "weird"]), ascii_scalars),
        "utilityref": st.one_of(st.sampled_from(["RHCI-DN-7", "7", " "]), ascii_scalars),
    },
    optional={
        **{name: ascii_scalars for name in SCALAR_FIELDS if name not in ("transactionstatus", "utilityref")},
        "additionalProperties": st.one_of(
            st.none(), st.just(""), st.dictionaries(st.sampled_from(["donation_id", "x"]), ascii_scalars, max_size=2)
        ),
    },
)
bodies = st.one_of(
    plain_bodies,
    st.fixed_dictionaries(
        {},
        optional={
            **{name: scalars for name in SCALAR_FIELDS},
            "transactionstatus": st.one_of(texts, scalars),
            "utilityref": st.one_of(texts, scalars),
            "additionalProperties": properties,
        },
    ),
    st.dictionaries(st.sampled_from([*FIELDS, "extra", "Amount"]), values, max_size=6),
    st.lists(scalars, max_size=2),
    scalars,
)


def _pydantic_fields(body: bytes, monkeypatch_target=events):
    """extract_fields with the pydantic-free path switched off."""
    original = monkeypatch_target._plain_callback
    monkeypatch_target._plain_callback = lambda data: None
    try:
        return extract_fields(body)
    finally:
        monkeypatch_target._plain_callback = original


def _assert_same(data) -> None:
    body = json.dumps(data).encode()
    fast = extract_fields(body, decode_json(body))
    slow = _pydantic_fields(body)
    assert fast == slow
    assert (fast.password, fast.signature, fast.amount_error) == (slow.password, slow.signature, slow.amount_error)
    assert [type(value) for value in fast.column_values().values()] == [
        type(value) for value in slow.column_values().values()
    ]

    decoded = decode_json(body)
    if decoded.error is not None or not isinstance(decoded.data, dict):
        return
    plain = events._plain_callback(decoded.data)
    if plain is None:  # pydantic decides these bodies on both paths
        return
    model = CallbackBody.model_validate(decoded.data)
    for name in SCALAR_FIELDS:
        assert plain.text(name) == model.text(name), name
    # the password is only ever read as str(password); JSON's 1.0 is a JsonNumber on one side, a float on the other
    assert plain.password == model.password and str(plain.password) == str(model.password)
    assert plain.amount == model.amount and type(plain.amount) is type(model.amount)
    assert plain.additionalProperties == model.additionalProperties
    assert events._hint(plain) == events._hint(model)


@settings(max_examples=400, deadline=None)
@given(bodies)
@example({"transactionstatus": "success", "utilityref": "RHCI-DN-7", "amount": 25000.000000000001})
@example({"transactionstatus": "success", "transid": 2**63})
@example({"transactionstatus": "successé", "reference": "r"})
@example({"transactionstatus": True, "reference": "r"})
@example({"transactionstatus": "success", "additionalProperties": {"donation_id": 7}})
@example({"transactionstatus": "success", "additionalProperties": {"donation_id": {"a": 1}}})
@example({"transactionstatus": "success", "additionalProperties": '{"donation_id": 7}'})
@example({"transactionstatus": " ", "reference": "r"})
@example({"transactionstatus": "success", "reference": " "})
def test_the_plain_path_and_pydantic_agree(data):
    _assert_same(data)


@settings(max_examples=300, deadline=None)
@given(plain_bodies)
def test_the_plain_path_and_pydantic_agree_on_common_bodies(data):
    _assert_same(data)


@pytest.mark.parametrize(
    "data",
    [
        {"transactionstatus": "success", "utilityref": "RHCI-DN-7", "amount": "25000"},
        {"transactionstatus": "success", "reference": "r", "msisdn": 712345678, "password": 1234},
        {"transactionstatus": "failure", "additionalProperties": {"donation_id": "9"}},
    ],
)
def test_common_bodies_take_the_plain_path_and_agree(data):
    decoded = decode_json(json.dumps(data).encode())
    assert events._plain_callback(decoded.data) is not None
    _assert_same(data)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"reference": "r"}, "schema: transactionstatus is missing"),
        ({"transactionstatus": "success"}, "schema: no reference"),
        ({"transactionstatus": "success", "additionalProperties": {"donation_id": True}}, "schema: no reference"),
    ],
)
def test_both_paths_give_the_same_schema_error(data, error):
    body = json.dumps(data).encode()
    assert extract_fields(body).parse_error.startswith(error)
    assert _pydantic_fields(body).parse_error.startswith(error)
    with pytest.raises(ParseError, match=error):
        events.parse_callback(body)
