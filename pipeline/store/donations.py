"""Patients and donations: creation and lookup. Their derived columns belong to the fold."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy.orm import Session

from pipeline.errors import InputError, NotFound
from pipeline.events import normalise_msisdn
from pipeline.fold import PatientStatus, Status
from pipeline.models import Donation, Patient
from pipeline.resolution import ReferenceFormat

PROVIDERS = ("Airtel", "Tigo", "Halopesa", "Azampesa", "Mpesa")
_PROVIDER_NAMES = {known.lower(): known for known in PROVIDERS}


def create_patient(session: Session, *, name: str, funding_required: Decimal, now: datetime) -> Patient:
    if not name.strip():
        raise InputError("patient name must not be empty")
    if funding_required <= 0:
        raise InputError("funding_required must be positive")
    patient = Patient(
        name=name.strip(),
        funding_required=funding_required,
        created_at=now,
        funding_received=Decimal("0"),
        status=PatientStatus.FUNDING,
    )
    session.add(patient)
    session.flush()
    return patient


def get_patient(session: Session, patient_id: int) -> Patient:
    patient = session.get(Patient, patient_id)
    if patient is None:
        raise NotFound(f"patient {patient_id} not found")
    return patient


def get_donation(session: Session, donation_id: int) -> Donation:
    donation = session.get(Donation, donation_id)
    if donation is None:
        raise NotFound(f"donation {donation_id} not found")
    return donation


def make_reference(prefix: str, donation_id: int, created_at: datetime) -> str:
    """`{prefix}-{id}-{YYYYmmddHHMMSS}`, e.g. RHCI-DN-123-20251219120000 (pipeline.resolution reads it back)."""
    return ReferenceFormat(prefix).reference(donation_id, created_at)


def known_provider(provider: object) -> str | None:
    """The provider's spelling in PROVIDERS (case and surrounding spaces ignored), or None when it is not one."""
    return _PROVIDER_NAMES.get(provider.strip().lower()) if isinstance(provider, str) else None


def normalise_provider(provider: str) -> str:
    known = known_provider(provider)
    if known is not None:
        return known
    raise InputError(f"provider must be one of {', '.join(PROVIDERS)}: {provider!r}")


def create_donation(
    session: Session,
    *,
    patient_id: int | None,
    amount: Decimal,
    currency: str,
    charge_amount: Decimal,
    charge_currency: str,
    msisdn: str | None,
    provider: str | None,
    reference_prefix: str,
    now: datetime,
    patient_amount: Decimal | None = None,
    support_amount: Decimal | None = None,
) -> Donation:
    """Insert a PENDING donation and give it its external reference. Validates amounts, msisdn, provider."""
    if amount <= 0:
        raise InputError("amount must be positive")
    if patient_id is not None:
        get_patient(session, patient_id)
    # patient_amount defaults to amount; a given support share comes out of it
    if support_amount is None:
        support_amount = Decimal("0") if patient_amount is None else amount - patient_amount
    if patient_amount is None:
        patient_amount = amount - support_amount
    if patient_amount < 0 or support_amount < 0:
        raise InputError("patient and support amounts must not be negative")
    if patient_amount + support_amount != amount:
        raise InputError(
            f"patient amount {patient_amount} + support amount {support_amount} must equal amount {amount}"
        )
    normalised_msisdn = None
    if msisdn is not None:
        normalised_msisdn = normalise_msisdn(msisdn)
        if normalised_msisdn is None:
            raise InputError(f"msisdn is not a Tanzanian mobile number: {msisdn!r}")
    donation = Donation(
        patient_id=patient_id,
        amount=amount,
        currency=currency,
        patient_amount=patient_amount,
        support_amount=support_amount,
        charge_amount=charge_amount,
        charge_currency=charge_currency,
        msisdn=normalised_msisdn,
        provider=normalise_provider(provider) if provider else None,
        created_at=now,
        status=Status.PENDING,
        events_applied=0,
        needs_check=False,
    )
    session.add(donation)
    session.flush()
    donation.external_reference = make_reference(reference_prefix, donation.id, now)
    session.flush()
    return donation
