"""The one resolution rule (pipeline.resolution): which donation a callback is about, decided the same way
by the receiver's 200/404, the fold and rebuild --check; and no money moved on facts that disagree.
Each numbered case of the money-safety issue is here (3 and 5's poll are also in test_fold_pure), on a
real SQLite file and on real MariaDB."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from starlette.testclient import TestClient

from jobs.fold import run_fold
from jobs.rebuild import check
from pipeline.db import transaction
from pipeline.fold import FoldEvent
from pipeline.models import Donation
from pipeline.resolution import DonationFacts, DonationIndex, decide, lookup_keys
from receiver.app import CALLBACK_PATH, create_app
from tests.builders import add_patient, append
from tests.servers import add_donation

JSON = {"content-type": "application/json"}
T0 = datetime(2026, 1, 14, 9, 30, tzinfo=UTC)


@contextlib.contextmanager
def receiver(backend, **overrides):
    with TestClient(create_app(backend.config(**overrides)), client=("127.0.0.1", 50000)) as client:
        yield client


def body(
    utilityref=None,
    hint=None,
    transaction="tx-foreign",
    msisdn="255711000111",
    operator="Airtel",
    amount="1000",
    status="success",
    **extra,
) -> bytes:
    data = {
        "message": "success",
        "transactionstatus": status,
        "operator": operator,
        "reference": transaction,
        "externalreference": transaction,
        "utilityref": utilityref,
        "amount": amount,
        "transid": transaction,
        "msisdn": msisdn,
        "mnoreference": None,
    }
    if hint is not None:
        data["additionalProperties"] = {"donation_id": str(hint)}
    data.update(extra)
    return json.dumps(data).encode()


def credits(backend) -> int:
    return backend.scalar("SELECT COUNT(*) FROM funding_credits")


def anomalies(backend, donation_id=None) -> list[tuple]:
    rows = backend.rows("SELECT kind, donation_id FROM anomalies ORDER BY id")
    return [tuple(row) for row in rows if donation_id is None or row[1] == donation_id]


# --- 1. a callback never completes a donation it does not belong to --------------------------------------


def test_1_a_foreign_callback_naming_a_donation_only_by_its_id_moves_no_money(backend):
    """utilityref RHCI-DN-9-20251201000000, transaction id, phone and operator match no donation, but
    additionalProperties.donation_id is 9: donation 9 used to be completed and its patient credited."""
    config = backend.config()
    patient = add_patient(backend.engine, T0)
    add_donation(backend.engine, "RHCI-DN-9-20260101080000", donation_id=9)
    with transaction(backend.engine) as session:
        session.get(Donation, 9).patient_id = patient
    foreign = body("RHCI-DN-9-20251201000000", hint=9)
    with receiver(backend) as client:
        assert client.post(CALLBACK_PATH, content=foreign, headers=JSON).status_code == 404
    run_fold(backend.engine, config, T0)
    assert backend.scalar("SELECT status FROM donations WHERE id = 9") == "PENDING"
    assert credits(backend) == 0
    assert backend.scalar("SELECT funding_received FROM patients WHERE id = :p", p=patient) in (
        0,
        Decimal("0"),
        Decimal("0.00"),
    )
    assert anomalies(backend) == [("reference_conflict", 9)]
    detail = backend.scalar("SELECT detail FROM anomalies")
    assert "utilityref 'RHCI-DN-9-20251201000000' is not its reference" in detail and "msisdn differs" in detail
    assert check(backend.engine, config).differences == []
    from jobs.report import build_report

    entry = build_report(backend.engine, config, day=T0.date(), now=T0)["anomalies"]["by_kind"]["reference_conflict"]
    assert entry["count"] == 1 and "nothing moved" in entry["meaning"] and entry["latest"][0]["donation_id"] == 9


def test_1_a_foreign_callback_attaches_nothing_to_a_completed_donation(backend):
    """A second foreign callback with donation_id 4 got a 200 and an amount_mismatch on completed donation 4."""
    config = backend.config()
    add_donation(backend.engine, "RHCI-DN-4-20260101080000", donation_id=4, msisdn="255789123456", provider="Mpesa")
    genuine = body("RHCI-DN-4-20260101080000", transaction="tx-4", msisdn="255789123456", operator="Mpesa")
    foreign = body("RHCI-DN-4-20251201000000", hint=4, amount="5000")
    with receiver(backend) as client:
        assert client.post(CALLBACK_PATH, content=genuine, headers=JSON).status_code == 200
        run_fold(backend.engine, config, T0)
        assert client.post(CALLBACK_PATH, content=foreign, headers=JSON).status_code == 404
    run_fold(backend.engine, config, T0 + timedelta(seconds=1))
    assert backend.scalar("SELECT status FROM donations WHERE id = 4") == "COMPLETED"
    assert anomalies(backend) == [("reference_conflict", 4)]  # no amount_mismatch
    assert credits(backend) == 1
    assert check(backend.engine, config).differences == []


@pytest.mark.parametrize(
    "changes, agrees",
    [
        ({}, True),  # no reference stated, phone and operator agree: the weak key is accepted
        ({"transaction": "tx-12"}, False),  # a transaction id it has none of yet: waits for the checkout's
        ({"utilityref": "RHCI-DN-12-20260101080000"}, True),  # the id inside our reference is the hint's
        ({"utilityref": "RHCI-DN-13-20260101080000"}, False),  # ... or names another donation
        ({"utilityref": "ORDER-55"}, False),  # not a reference we issued
        ({"msisdn": "255711000111"}, False),
        ({"operator": "Airtel"}, False),
        ({"operator": "M-Pesa"}, True),  # written differently, the same provider
        ({"msisdn": "0758285812"}, True),  # written differently, the same number
    ],
)
def test_1_a_weak_key_resolves_only_when_every_stated_fact_agrees(backend, changes, agrees):
    config = backend.config()
    add_donation(
        backend.engine, None, donation_id=12, msisdn="255758285812", provider="Mpesa"
    )  # stores no reference (the portal's case)
    data = dict(utilityref=None, hint=12, transaction=None, msisdn="255758285812", operator="Mpesa")
    data.update(changes)
    raw = body(**data)
    with receiver(backend) as client:
        assert client.post(CALLBACK_PATH, content=raw, headers=JSON).status_code == (200 if agrees else 404)
    run_fold(backend.engine, config, T0)
    assert backend.scalar("SELECT status FROM donations WHERE id = 12") == ("COMPLETED" if agrees else "PENDING")
    assert anomalies(backend) == ([] if agrees else [("reference_conflict", 12)])
    assert check(backend.engine, config).differences == []


def test_1_a_stated_transaction_id_that_is_not_the_donations_refuses_the_hint(backend):
    config = backend.config()
    add_donation(
        backend.engine,
        None,
        donation_id=12,
        transaction_id="tx-learned-at-checkout",
        msisdn="255758285812",
        provider="Mpesa",
    )
    raw = body(None, hint=12, transaction="tx-someone-else", msisdn="255758285812", operator="Mpesa")
    with receiver(backend) as client:
        assert client.post(CALLBACK_PATH, content=raw, headers=JSON).status_code == 404
    run_fold(backend.engine, config, T0)
    assert backend.scalar("SELECT status FROM donations WHERE id = 12") == "PENDING"


def test_1_facts_that_point_at_two_donations_move_no_money(backend):
    config = backend.config()
    add_donation(backend.engine, None, donation_id=12, msisdn="255758285812", provider="Mpesa")
    add_donation(backend.engine, None, donation_id=13, msisdn="255758285812", provider="Mpesa")
    raw = body("RHCI-DN-13-20260101080000", hint=12, transaction=None, msisdn="255758285812", operator="Mpesa")
    with receiver(backend) as client:
        assert client.post(CALLBACK_PATH, content=raw, headers=JSON).status_code == 404
    run_fold(backend.engine, config, T0)
    assert backend.scalar("SELECT COUNT(*) FROM donations WHERE status = 'PENDING'") == 2
    assert backend.scalar("SELECT kind FROM anomalies") == "reference_conflict"
    assert "name donations 12, 13" in backend.scalar("SELECT detail FROM anomalies")


# --- 2. the receiver and the fold agree ----------------------------------------------------------------


def test_2_a_callback_named_by_externalreference_as_transaction_id_is_known_to_both(backend):
    """known_references never tried externalreference against donations.transaction_id, resolve() did:
    AzamPay was told 404 for a callback that the fold then credited."""
    config = backend.config()
    add_donation(backend.engine, "RHCI-DN-21-20260101080000", donation_id=21, transaction_id="AZ-777")
    raw = body(None, transaction="AZ-777", reference=None, transid=None, msisdn="255789123456", operator="Mpesa")
    with receiver(backend) as client:
        assert client.post(CALLBACK_PATH, content=raw, headers=JSON).status_code == 200
    run_fold(backend.engine, config, T0)
    assert backend.scalar("SELECT status FROM donations WHERE id = 21") == "COMPLETED"


# --- 3. an unusable amount on a success ends in REVIEW, and no poll overrides it -------------------------


@pytest.mark.parametrize("amount", ["25000.001", "-25000", "abc", "99999999999999"])
def test_3_an_unusable_amount_keeps_the_callback_linked_and_ends_in_review(backend, amount):
    config = backend.config()
    add_donation(backend.engine, "RHCI-DN-31-20260101080000", donation_id=31, amount="25000")
    raw = body("RHCI-DN-31-20260101080000", transaction="tx-31", msisdn="255789123456", operator="Mpesa", amount=amount)
    with receiver(backend) as client:
        answer = client.post(CALLBACK_PATH, content=raw, headers=JSON)
    assert answer.status_code == 200  # the donation is known; the amount is a fact the fold judges
    assert backend.scalar("SELECT utilityref FROM payment_events") == "RHCI-DN-31-20260101080000"
    assert backend.scalar("SELECT parse_error FROM payment_events") is None
    run_fold(backend.engine, config, T0)
    append(
        backend.engine,
        b'{"data":"Transaction successful."}',
        T0 + timedelta(minutes=5),
        source="poll",
        donation_id=31,
        status="SUCCESS",
    )
    run_fold(backend.engine, config, T0 + timedelta(minutes=5))
    assert backend.scalar("SELECT status FROM donations WHERE id = 31") == "REVIEW"
    assert credits(backend) == 0
    assert ("amount_mismatch", 31) in anomalies(backend)
    assert check(backend.engine, config).differences == []


# --- 5. polling a decided donation again -----------------------------------------------------------------


@pytest.mark.parametrize("status, poll_answer", [("success", "SUCCESS"), ("cancelled", "FAILED"), ("failed", "FAILED")])
def test_5_polling_a_decided_donation_twice_adds_no_anomaly(backend, status, poll_answer):
    config = backend.config()
    add_donation(backend.engine, "RHCI-DN-51-20260101080000", donation_id=51)
    append(
        backend.engine,
        body("RHCI-DN-51-20260101080000", transaction="tx-51", msisdn="255789123456", operator="Mpesa", status=status),
        T0,
    )
    run_fold(backend.engine, config, T0)
    decided = backend.scalar("SELECT status FROM donations WHERE id = 51")
    for minutes in (5, 10):
        append(
            backend.engine,
            b'{"data":"..."}',
            T0 + timedelta(minutes=minutes),
            source="poll",
            donation_id=51,
            status=poll_answer,
        )
        run_fold(backend.engine, config, T0 + timedelta(minutes=minutes))
    assert backend.scalar("SELECT status FROM donations WHERE id = 51") == decided
    assert anomalies(backend) == []
    assert check(backend.engine, config).differences == []


@pytest.mark.parametrize("stated, agrees", [("AZ-REAL", True), ("AZ-OTHER", False)])
def test_1_a_transaction_id_stated_before_the_checkout_stored_one_waits_for_it(backend, stated, agrees):
    """A weak-key callback folded before its donation's checkout committed AzamPay's id used to be judged
    without that fact (and credited), while a rebuild, which sees the id, refused it. Now it waits, and is
    decided again when the checkout offers the id: live and rebuild agree either way."""
    config = backend.config()
    add_donation(backend.engine, None, donation_id=12, msisdn="255758285812", provider="Mpesa")
    append(backend.engine, body(None, hint=12, transaction=stated, msisdn="255758285812", operator="Mpesa"), T0)
    run_fold(backend.engine, config, T0)
    assert backend.scalar("SELECT status FROM donations WHERE id = 12") == "PENDING"
    assert "cannot be checked yet" in backend.scalar("SELECT detail FROM anomalies WHERE kind = 'reference_conflict'")
    with transaction(backend.engine) as session:  # the checkout's answer: AzamPay's id, stored with its event
        session.get(Donation, 12).transaction_id = "AZ-REAL"
    append(
        backend.engine,
        b'{"success": true, "transactionId": "AZ-REAL"}',
        T0 + timedelta(seconds=1),
        source="checkout",
        donation_id=12,
        status="PENDING",
    )
    run_fold(backend.engine, config, T0 + timedelta(seconds=2))
    assert backend.scalar("SELECT status FROM donations WHERE id = 12") == ("COMPLETED" if agrees else "PENDING")
    assert check(backend.engine, config).differences == []


def test_1_a_number_past_its_retention_is_not_compared():
    """pipeline.privacy replaces an old number by `hmac:<hex>:<last 3>`; comparing it with a clear one
    would refuse a callback live that a rebuild, after the event's own number is retained, accepts."""
    donation = DonationFacts(12, None, None, "hmac:0123456789abcdef:812", "Mpesa")
    index = DonationIndex()
    index.add(donation)
    for msisdn in ("255758285812", "255700000000", "hmac:0123456789abcdef:812", "hmac:fedcba9876543210:000"):
        event = FoldEvent(
            1, T0, "callback", "n/a", "SUCCESS", Decimal(1000), donation_hint="12", msisdn=msisdn, operator="Mpesa"
        )
        assert decide(event, lookup_keys(event), index).donation_id == 12, msisdn
    clear = DonationFacts(12, None, None, "255758285812", "Mpesa")
    index = DonationIndex()
    index.add(clear)
    event = FoldEvent(
        1, T0, "callback", "n/a", "SUCCESS", Decimal(1000), donation_hint="12", msisdn="255700000000", operator="Mpesa"
    )
    assert decide(event, lookup_keys(event), index).conflict == "donation 12 named by donation_hint, but msisdn differs"
