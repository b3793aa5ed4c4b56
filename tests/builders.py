"""Test data builders: patients, donations and log events, written through the real store functions."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal

from pipeline.db import transaction
from pipeline.events import extract_fields
from pipeline.store.donations import create_donation, create_patient
from pipeline.store.events import append_event, event_row


def pending_donation(
    reference, created_at, amount="1000", transaction_id=None, msisdn="255758285812", provider="Mpesa", **columns
) -> dict:
    """A PENDING donation's columns, all of the amount for the patient, for direct inserts with any reference."""
    return dict(
        amount=Decimal(amount),
        currency="TZS",
        patient_amount=Decimal(amount),
        support_amount=Decimal("0"),
        charge_amount=Decimal(amount),
        charge_currency="TZS",
        msisdn=msisdn,
        provider=provider,
        external_reference=reference,
        transaction_id=transaction_id,
        created_at=created_at,
        status="PENDING",
        **columns,
    )


LIVE_SHAPE = {
    "message": "SUCCESS",
    "user": None,
    "password": None,
    "clientId": None,
    "operator": "Mpesa",
    "msisdn": "0758285812",
    "mnoreference": "MNO-1",
    "submerchantAcc": None,
    "additionalProperties": {},
}


def add_patient(engine, now, required="100000", name="Amina") -> int:
    with transaction(engine) as session:
        return create_patient(session, name=name, funding_required=Decimal(required), now=now).id


def add_donation(
    engine, now, patient_id=None, amount="25000", transaction_id=None, patient_amount=None, prefix="RHCI-DN"
):
    """Returns (id, external_reference)."""
    with transaction(engine) as session:
        donation = create_donation(
            session,
            patient_id=patient_id,
            amount=Decimal(amount),
            currency="TZS",
            charge_amount=Decimal(amount),
            charge_currency="TZS",
            msisdn="0758285812",
            provider="Mpesa",
            reference_prefix=prefix,
            now=now,
            patient_amount=None if patient_amount is None else Decimal(patient_amount),
        )
        if transaction_id:
            donation.transaction_id = transaction_id
        return donation.id, donation.external_reference


def callback_body(
    reference: str, status="success", amount="25000", transaction_id="tx-1", password=None, **extra
) -> bytes:
    body = dict(
        LIVE_SHAPE,
        transactionstatus=status,
        utilityref=reference,
        reference=transaction_id,
        externalreference=transaction_id,
        transid=transaction_id,
        amount=amount,
        password=password,
    )
    body.update(extra)
    return json.dumps(body).encode()


def append(
    engine, body: bytes, received_at: datetime, source="callback", auth="n/a", donation_id=None, status=None
) -> int:
    """Append an event the way the receiver/poller would (typed fields from the body for callbacks)."""
    if source in ("callback", "import"):
        fields = extract_fields(body)
    else:
        from pipeline.events import EventFields

        fields = EventFields(status=status, status_raw=status)
    with transaction(engine) as session:
        return append_event(
            session,
            event_row(
                source=source, body=body, received_at=received_at, auth=auth, fields=fields, donation_id=donation_id
            ),
        )


def at(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)
