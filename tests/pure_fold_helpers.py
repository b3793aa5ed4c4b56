"""Events and states for the pure fold's tests (test_fold_pure, test_fold_pure_decisions): callbacks built
from the recorded AzamPay payloads as the log builds them, and trust policies."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from pipeline.events import extract_fields
from pipeline.fold import (
    DonationState,
    FoldEvent,
    TrustPolicy,
    fold_donation,
)
from tests.conftest import fixture_bytes

T0 = datetime(2026, 1, 14, 9, 30, 0, tzinfo=UTC)
OPEN = TrustPolicy()  # no credential configured: every callback trusted
LOCKED = TrustPolicy(credential_configured=True)  # password or signature configured
VERIFY = TrustPolicy(credential_configured=True, verify_only=True)  # mode `verify`

SUCCESS_FIXTURE = "callback_live_shape_success.json"  # RHCI-DN-42-20260114093012, 25000
MINIMAL_FIXTURE = "callback_live_shape_minimal.json"  # RHCI-DN-43-20260114101545, 60000
FAILURE_FIXTURE = "callback_failure.json"  # RHCI-DN-44-20260114111200, "failure"
FAILED_FIXTURE = "callback_failed_spelling.json"  # RHCI-DN-45-20260114112233, "FAILED", donation_id hint 45
GUIDE_FIXTURE = "callback_guide_example.json"  # RHCI-DN-999-20251219120000, 1000


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def body(name: str, **changes) -> bytes:
    """A fixture payload, byte-exact, or with some keys changed (e.g. transactionstatus, amount)."""
    raw = fixture_bytes(name)
    if not changes:
        return raw
    data = json.loads(raw)
    data.update(changes)
    return json.dumps(data).encode()


def callback(
    name: str, event_id: int, seconds: float = 0, auth: str = "n/a", source: str = "callback", **changes
) -> FoldEvent:
    fields = extract_fields(body(name, **changes))
    assert fields.parse_error is None, fields.parse_error
    return FoldEvent(
        id=event_id,
        received_at=at(seconds),
        source=source,
        auth=auth,
        status=fields.status,
        amount=fields.amount,
        utilityref=fields.utilityref,
        externalreference=fields.externalreference,
        donation_hint=fields.donation_hint,
        transaction_ref=fields.transaction_ref,
        donation_id=None,
        parse_error=fields.parse_error,
        status_raw=fields.status_raw,
        msisdn=fields.msisdn,
        operator=fields.operator,
    )


def ours(
    event_id: int, source: str, status: str, donation_id: int, seconds: float = 0, amount: Decimal | None = None
) -> FoldEvent:
    """A poll / checkout / operator event: appended by us, names its donation, usually carries no amount."""
    return FoldEvent(event_id, at(seconds), source, "n/a", status, amount, donation_id=donation_id, status_raw=status)


def donation(
    fixture: str = SUCCESS_FIXTURE,
    patient_id: int | None = 7,
    patient_amount: str | None = None,
    donation_id: int | None = None,
) -> DonationState:
    """The donation a fixture payload is about: its reference, its amount as charge_amount."""
    fields = extract_fields(fixture_bytes(fixture))
    reference = fields.utilityref
    number = donation_id if donation_id is not None else int(reference.split("-")[2])
    charge = fields.amount
    return DonationState(
        id=number,
        patient_id=patient_id,
        charge_amount=charge,
        patient_amount=Decimal(patient_amount) if patient_amount is not None else charge,
        external_reference=reference,
        transaction_id=fields.transaction_ref,
    )


def run(state: DonationState, events, policy: TrustPolicy = OPEN):
    anomalies, transitions = fold_donation(state, events, policy)
    return [a.kind for a in anomalies], transitions
