"""A signature-verified callback names its donation only through the fields the signature covers.

The RSA signature covers utilityref+externalreference+transactionstatus+operator joined without
separators (docs/fold.md, "Signed callbacks"; from AzamPay's SDKs). Moving characters between utilityref
and externalreference leaves that text unchanged, and the donation id hint, the transaction ids and the
amount are not signed: an independent probe turned one genuine signed callback for donation A into three
bodies that the receiver answered 200 as verified and the fold credited to donations C, D and E."""

from __future__ import annotations

import base64
import contextlib
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from jobs.fold import run_fold
from jobs.rebuild import check
from pipeline.auth import Authenticator
from pipeline.events import extract_fields, signed_message
from pipeline.fold import SIGNED, FoldEvent
from pipeline.resolution import DonationFacts, DonationIndex, decide, lookup_keys
from receiver.app import CALLBACK_PATH, create_app
from tests.servers import add_donation

JSON = {"content-type": "application/json"}
T0 = datetime(2026, 1, 14, 9, 30, tzinfo=UTC)
A_REF = "RHCI-DN-1-20260114093000"
A_TX = "7be2443c9e51a0d6c2b8e317"


@pytest.fixture(scope="module")
def key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_of(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def genuine(key, utilityref=A_REF, externalreference=A_TX, amount="1000", **unsigned) -> dict:
    data = {
        "message": "success",
        "transactionstatus": "success",
        "operator": "Mpesa",
        "reference": A_TX,
        "externalreference": externalreference,
        "utilityref": utilityref,
        "amount": amount,
        "transid": A_TX,
        "msisdn": "255789123456",
        "mnoreference": None,
    }
    data["signature"] = base64.b64encode(
        key.sign(signed_message(json.dumps(data).encode()), padding.PKCS1v15(), hashes.SHA256())
    ).decode()
    data.update(unsigned)
    return data


def resplit(data: dict, cut: int) -> dict:
    """The same signed text, split at another place between utilityref and externalreference."""
    joined = (data["utilityref"] or "") + (data["externalreference"] or "")
    return dict(data, utilityref=joined[:cut], externalreference=joined[cut:])


@contextlib.contextmanager
def receiver(backend, key):
    with TestClient(
        create_app(backend.config(**{"webhook.signature_public_key_pem": pem_of(key)})), client=("127.0.0.1", 50000)
    ) as client:
        yield client


def test_the_probe_reused_signed_bodies_credit_no_other_donation(backend, key):
    config = backend.config(**{"webhook.signature_public_key_pem": pem_of(key)})
    add_donation(backend.engine, A_REF, donation_id=1, transaction_id=A_TX, amount="1000")
    add_donation(backend.engine, "RHCI-DN-3-20260114093100", donation_id=3, transaction_id="tx-c", amount="5000")
    add_donation(backend.engine, "RHCI-DN-4-20260114093200", donation_id=4, transaction_id="tx-d", amount="5000")
    add_donation(backend.engine, None, donation_id=5, amount="5000")  # stores no reference (the portal's case)
    original = genuine(key)
    forged = [
        resplit(
            dict(original, amount="5000", additionalProperties={"donation_id": "3"}), len(A_REF) - 3
        ),  # C through the hint
        resplit(
            dict(original, amount="5000", reference="tx-d", transid="tx-d"), len(A_REF) + 2
        ),  # D through its transaction id
        resplit(
            dict(original, amount="5000", additionalProperties={"donation_id": "5"}), 0
        ),  # E, which stores no reference
    ]
    with receiver(backend, key) as client:
        assert client.post(CALLBACK_PATH, content=json.dumps(original).encode(), headers=JSON).status_code == 200
        answers = [client.post(CALLBACK_PATH, content=json.dumps(body).encode(), headers=JSON) for body in forged]
    auths = [row[0] for row in backend.rows("SELECT auth FROM payment_events ORDER BY id")]
    assert auths == [SIGNED] * 4  # the signature still verifies on every reused body
    assert [answer.status_code for answer in answers] == [404, 404, 404]
    run_fold(backend.engine, config, T0)
    statuses = dict(backend.rows("SELECT id, status FROM donations ORDER BY id"))
    assert statuses == {1: "COMPLETED", 3: "PENDING", 4: "PENDING", 5: "PENDING"}
    assert backend.scalar("SELECT COUNT(*) FROM funding_credits") == 1
    assert check(backend.engine, config).differences == []


def test_a_signed_callback_for_a_donation_that_stores_no_reference_resolves_through_the_id_in_it(backend, key):
    config = backend.config(**{"webhook.signature_public_key_pem": pem_of(key)})
    add_donation(
        backend.engine, None, donation_id=7, transaction_id=A_TX, amount="1000"
    )  # its checkout stored AzamPay's id
    with receiver(backend, key) as client:
        body = genuine(key, utilityref="RHCI-DN-7-20260114093000")
        assert client.post(CALLBACK_PATH, content=json.dumps(body).encode(), headers=JSON).status_code == 200
    run_fold(backend.engine, config, T0)
    assert backend.scalar("SELECT status FROM donations WHERE id = 7") == "COMPLETED"


DONATIONS = [
    DonationFacts(1, A_REF, A_TX, "255789123456", "Mpesa"),
    DonationFacts(2, "RHCI-DN-2-20260114093000", "tx-b", "255789123456", "Mpesa"),
    DonationFacts(12, None, "tx-l", None, None),
    DonationFacts(10, None, None, None, None),
    DonationFacts(14, None, None, None, None),
]
INDEX = DonationIndex()
for _donation in DONATIONS:
    INDEX.add(_donation)
IDS = [str(d.id) for d in DONATIONS] + ["0", "99"]
TXS = [d.transaction_id for d in DONATIONS if d.transaction_id] + ["nothing"]


@settings(max_examples=500, deadline=None)
@given(
    genuine_ref=st.sampled_from(
        [A_REF, "RHCI-DN-10-20260114093000", "RHCI-DN-14-20260114093000"]
    ),  # references we issued
    azampay_id=st.sampled_from(
        [A_TX, "4" + A_TX, "0-20260114093000", "4-20260114093000", ""]
    ),  # AzamPay's ids, never ours
    cut=st.integers(min_value=0, max_value=80),
    hint=st.none() | st.sampled_from(IDS),
    transaction=st.none() | st.sampled_from(TXS),
    msisdn=st.sampled_from(["255789123456", None, "255700000000"]),
)
def test_no_resplit_rekey_or_unsigned_change_moves_a_signed_callback_to_another_donation(
    genuine_ref, azampay_id, cut, hint, transaction, msisdn
):
    """Whatever a replayer does to a genuine signed body (AzamPay signs one for a checkout we started, so
    its utilityref is a reference we issued) without breaking the signature, it resolves to the donation
    the genuine body resolves to, or to none."""
    # the donation the genuine reference names (other facts may make a body wait, never move it elsewhere)
    intended = {A_REF: 1, "RHCI-DN-10-20260114093000": 10, "RHCI-DN-14-20260114093000": 14}[genuine_ref]
    joined = genuine_ref + azampay_id
    forged = FoldEvent(
        1,
        T0,
        "callback",
        SIGNED,
        "SUCCESS",
        Decimal(5000),
        joined[:cut] or None,
        joined[cut:] or None,
        hint,
        transaction,
        msisdn=msisdn,
        operator="Mpesa",
    )
    assert decide(forged, lookup_keys(forged), INDEX).donation_id in (None, intended)


def test_the_authenticator_still_verifies_a_resplit_body(key):
    """Why the rule above is needed: the signed text cannot tell the split apart."""
    original = genuine(key)
    forged = json.dumps(resplit(original, 5)).encode()
    authenticator = Authenticator(public_key=key.public_key())
    assert authenticator.check(extract_fields(forged), forged) == SIGNED
