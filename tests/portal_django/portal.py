"""What the portal's code does to its two tables, through its own ORM, one helper per code path.

Every helper names the portal code it copies (jenadiusnicholaus/rhci-portal-backend at 298c4cb). They write
through Django on `self.alias` with the portal's own statements: `save()` of a whole in-memory row where the
portal saves, `queryset.update()` where it updates, `select_for_update()` where it locks. They skip what is not
a database write (the AzamPay HTTP calls, e-mails, the PatientTimeline rows of patient/signals.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from tests.portal_django.auth_app.models import PatientProfile
from tests.portal_django.donor.models import Donation


def _patient_completion_save(patient: PatientProfile) -> None:
    """The portal's patient step after a completion (callback_views, donation_type_views, stablecoin_webhook,
    billpay_views): it compares the *stored* funding_received column, which no portal code updates, then
    save()s the whole in-memory patient row (updated_at moves, stale columns are written back)."""
    if patient.funding_required == 0 or patient.funding_received >= patient.funding_required:
        patient.status = "FULLY_FUNDED"
    patient.save()


@dataclass
class PortalDB:
    """A fresh, migrated portal database: `alias` for Django, `url` for SQLAlchemy (azamrecon's make_engine)."""

    alias: str
    url: str
    kind: str  # "sqlite" or "mysql"
    path: Path | None = None  # the SQLite file
    _reset: Callable[[], None] | None = field(default=None, repr=False)

    def reset(self) -> None:
        """Empty again: the portal tables truncated and every other table (azamrecon's) dropped."""
        self._reset()

    def create_patient(self, full_name, funding_required, funding_currency="TZS", status="PUBLISHED", **fields):
        """A patient as registration (auth_app views) and the admin's verification (auth_app/admin_views.py:
        status PUBLISHED, funding_required set) leave it; save() draws its bill_identifier."""
        values = {"gender": "F", "short_description": full_name, "long_story": "", **fields}
        return PatientProfile.objects.using(self.alias).create(
            full_name=full_name,
            funding_required=Decimal(str(funding_required)),
            funding_currency=funding_currency,
            status=status,
            **values,
        )

    def create_donation(
        self,
        patient=None,
        *,
        amount,
        patient_amount=None,
        currency="TZS",
        status="PENDING",
        payment_gateway="",
        **fields,
    ):
        """The row donor/payments/donation_type_views.py `_process_donation` creates before calling AzamPay:
        amount = patient_amount + rhci_support_amount, rhci_support_amount NULL when zero, anonymous."""
        amount = Decimal(str(amount))
        patient_amount = amount if patient_amount is None else Decimal(str(patient_amount))
        values = {
            "donation_type": "ONE_TIME",
            "message": "",
            "is_anonymous": True,
            "anonymous_name": "Test Donor",
            "anonymous_email": "donor@example.org",
            "recurring_frequency": 1,
            "is_recurring_active": False,
            "ip_address": "127.0.0.1",
            "user_agent": "",
            **fields,
        }
        return Donation.objects.using(self.alias).create(
            patient=patient,
            amount=amount,
            patient_amount=patient_amount,
            rhci_support_amount=(amount - patient_amount) or None,
            currency=currency,
            status=status,
            payment_gateway=payment_gateway,
            **values,
        )

    @staticmethod
    def external_id(donation, at=None) -> str:
        """The externalId donation_type_views.py sends AzamPay: `RHCI-DN-{id}-{timezone.now():%Y%m%d%H%M%S}`,
        stamped at checkout (UTC under USE_TZ), not from created_at; `at` fixes the instant."""
        return f"RHCI-DN-{donation.id}-{(at or timezone.now()).strftime('%Y%m%d%H%M%S')}"

    def checkout_saved(self, donation, provider="Airtel", bank=False, azampay_transaction_id=None, *, sandbox=False):
        """donation_type_views.py after AzamPay accepted the checkout: payment fields set on the in-memory row
        loaded before the HTTP call, then donation.save() rewrites every column (a status or completed_at
        written meanwhile is reverted). transaction_id is `response['data']['transactionId']` or the externalId;
        AzamPay answers transactionId at the top level, so in practice it is the externalId
        (azampay_transaction_id models an answer that has `data`). Returns the externalId sent."""
        external_id = self.external_id(donation)
        donation.payment_method = f"{'Bank Transfer' if bank else 'Mobile Money'} - {provider.title()}"
        donation.payment_gateway = "Azam Pay"
        donation.transaction_id = azampay_transaction_id or external_id
        if sandbox:  # settings.AZAM_PAY_ENVIRONMENT == 'sandbox'
            donation.status = "COMPLETED"
            donation.completed_at = timezone.now()
            if donation.patient:
                _patient_completion_save(donation.patient)
        donation.save()
        return external_id

    def checkout_saved_as(self, donation, external_id: str, provider="Airtel", bank=False) -> str:
        """checkout_saved with the externalId the view really sent AzamPay: it is stamped before the HTTP
        call, so the save can fall in a later second than checkout_saved's own stamp. Same late save()."""
        donation.payment_method = f"{'Bank Transfer' if bank else 'Mobile Money'} - {provider.title()}"
        donation.payment_gateway = "Azam Pay"
        donation.transaction_id = external_id
        donation.save()
        return external_id

    def sandbox_autocomplete(self, donation, provider="Airtel") -> str:
        """donation_type_views.py in sandbox mode: the checkout itself marks the donation COMPLETED (seconds
        after creation, no callback, no AzamPay confirmation), in the same late save(). Returns the externalId."""
        return self.checkout_saved(donation, provider=provider, sandbox=True)

    def manual_update(self, donation_id, status):
        """donor/payments/callback_views.py ManualPaymentUpdateView (AllowAny: unauthenticated): any donation to
        COMPLETED, FAILED or CANCELLED, from any status; COMPLETED stamps completed_at again; save()."""
        new_status = status.upper()
        if new_status not in ("COMPLETED", "FAILED", "CANCELLED"):
            raise ValueError(f"the endpoint answers 400 to status {status!r}")
        donation = Donation.objects.using(self.alias).get(id=donation_id)
        with transaction.atomic(using=self.alias):
            old_status = donation.status
            donation.status = new_status
            if new_status == "COMPLETED":
                donation.completed_at = timezone.now()
                if donation.patient and old_status != "COMPLETED":
                    _patient_completion_save(donation.patient)
            donation.save()
        return donation

    def status_view_complete(self, donation_id, during_azampay_call: Callable[[], None] | None = None) -> bool:
        """callback_views.py CheckPaymentStatusView when AzamPay answers SUCCESS: only a PENDING donation with a
        transaction_id; the row is read before the AzamPay call (run `during_azampay_call` there) and save()d
        whole after it, without a lock. Returns whether it wrote."""
        donation = Donation.objects.using(self.alias).get(id=donation_id)
        if not (donation.transaction_id and donation.status == "PENDING"):
            return False
        if during_azampay_call is not None:
            during_azampay_call()
        with transaction.atomic(using=self.alias):
            donation.status = "COMPLETED"
            donation.completed_at = timezone.now()
            donation.save()
            if donation.patient:
                _patient_completion_save(donation.patient)
        return True

    def stablecoin_complete(self, donation_id, payment_id=None, transaction_hash=None, chain="solana") -> bool:
        """donor/payments/stablecoin_webhook.py (`memo: donation-<id>`; no signature check when the header is
        absent): completes ANY donation id, AzamPay's included, overwriting its transaction_id and gateway.
        Returns False when the donation was already COMPLETED (its idempotency check)."""
        payment_id = payment_id or f"pepea-{uuid.uuid4().hex[:12]}"
        with transaction.atomic(using=self.alias):
            donation = Donation.objects.using(self.alias).select_for_update().get(id=donation_id)
            if donation.status == "COMPLETED":
                return False
            donation.status = "COMPLETED"
            donation.completed_at = timezone.now()
            donation.transaction_id = transaction_hash or payment_id
            donation.gateway_reference = payment_id
            donation.payment_gateway = "STABLECOIN_SOLANA"
            donation.payment_method = f"USDC on {chain.capitalize()}"
            donation.save()
            if donation.patient:
                _patient_completion_save(donation.patient)
        return True

    def admin_bulk(self, ids, status) -> int:
        """donor/admin.py DonationAdmin actions: mark_as_completed = queryset.update(status, completed_at=now),
        mark_as_failed = queryset.update(status='FAILED'). update() skips auto_now: updated_at does not move."""
        queryset = Donation.objects.using(self.alias).filter(id__in=list(ids))
        if status == "COMPLETED":
            return queryset.update(status="COMPLETED", completed_at=timezone.now())
        if status == "FAILED":
            return queryset.update(status="FAILED")
        raise ValueError(f"the admin has no bulk action to {status!r} (only COMPLETED, FAILED)")

    def refund(self, donation_id):
        """The Django admin's change form (donor/admin.py, status in its fieldsets) set to REFUNDED: save()."""
        donation = Donation.objects.using(self.alias).get(id=donation_id)
        donation.status = "REFUNDED"
        donation.save()
        return donation

    def bill_pay_donation(self, patient, amount, patient_amount=None, pg_reference_id=None, fsp_code="AIRTEL"):
        """donor/payments/billpay_views.py payment notification: a donation created COMPLETED at once (gateway
        AZAMPAY_BILLPAY, transaction_id = PgReferenceId, currency = the patient's funding_currency), then the
        patient step. The portal's own create passes fields the model lacks (patient_profile, donor_name...)
        and so raises; this is the row it means to write, with patient_amount given (it sets none)."""
        with transaction.atomic(using=self.alias):
            patient = PatientProfile.objects.using(self.alias).select_for_update().get(id=patient.id)
            amount = Decimal(str(amount))
            donation = Donation.objects.using(self.alias).create(
                patient=patient,
                amount=amount,
                patient_amount=amount if patient_amount is None else Decimal(str(patient_amount)),
                anonymous_name="Anonymous Donor",
                currency=patient.funding_currency,
                payment_method=fsp_code,
                payment_gateway="AZAMPAY_BILLPAY",
                transaction_id=pg_reference_id or f"PG{uuid.uuid4().hex[:16].upper()}",
                status="COMPLETED",
                completed_at=timezone.now(),
                is_anonymous=True,
            )
            _patient_completion_save(patient)
        return donation

    def read_donation(self, donation_id) -> Donation:
        """The row as stored now (a new ORM read)."""
        return Donation.objects.using(self.alias).get(id=donation_id)

    def read_patient(self, patient_id) -> PatientProfile:
        return PatientProfile.objects.using(self.alias).get(id=patient_id)
