"""Portal mode's rules (docs/portal.md): what a row of the Django portal's tables states, whose donation it
is, what AzamPay was asked to charge, which fact a change is, and azamrecon's result in the portal's words.

Pure: no SQL, no clock, no logging. pipeline/store/portal.py reads the rows; pipeline/portal_record.py records
the facts in the log, pipeline/portal_write.py writes the results and pipeline/portal_diff.py compares.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from typing import NamedTuple

from pipeline.fold import (
    CANCELLED,
    CENT,
    COMPLETED,
    EXPIRED,
    FAILED,
    PENDING,
    REFUNDED,
    REVIEW,
    UNKNOWN,
    PortalFact,
)
from pipeline.resolution import ReferenceFormat

OWNED, THE_PORTAL = "azamrecon", "portal"  # portal_donations.owner
# the portal's donation statuses as the fold reads them; PROCESSING (other payment paths) is not final
_PORTAL_STATUSES = {
    "PENDING": PENDING,
    "PROCESSING": PENDING,
    "COMPLETED": COMPLETED,
    "FAILED": FAILED,
    "CANCELLED": CANCELLED,
    "REFUNDED": REFUNDED,
}
FINAL_PORTAL_STATUSES = ("COMPLETED", "FAILED", "CANCELLED", "REFUNDED")  # what adoption records
DELETED = "DELETED"  # a recorded donation no longer in the portal's table
FUNDABLE = ("PUBLISHED", "AWAITING_FUNDING")  # the only patient statuses azamrecon moves to FULLY_FUNDED
FULLY_FUNDED = "FULLY_FUNDED"


class PortalDonation(NamedTuple):
    """A donor_donation row, as read (pipeline.store.portal)."""

    id: int
    patient_id: int | None
    amount: Decimal
    patient_amount: Decimal
    currency: str
    status: str
    transaction_id: str | None
    payment_gateway: str
    payment_method: str
    gateway_reference: str | None
    failure_reason: str
    completed_at: datetime | None
    created_at: datetime


class PortalPatient(NamedTuple):
    """An auth_app_patientprofile row, as read."""

    id: int
    full_name: str
    funding_required: Decimal
    funding_received: Decimal
    funding_currency: str
    status: str


def portal_status(raw: str | None) -> str:
    """The fold's reading of a portal status: UNKNOWN for one it does not know."""
    return _PORTAL_STATUSES.get((raw or "").strip().upper(), UNKNOWN)


def undecided(row: PortalDonation) -> bool:
    """A checkout still in flight (PENDING, no gateway yet) or one that timed out (FAILED with no gateway,
    and the donor may still pay): whose it is cannot be told yet, so it is not recorded until it can."""
    return not row.payment_gateway.strip() and row.status in ("PENDING", "FAILED")


def owner_of(row: PortalDonation, owned_gateways: list[str], azampay_seen: bool) -> str:
    """azamrecon owns a donation whose gateway is one of `owned_gateways`, or that an AzamPay callback or
    checkout named before it was first recorded; every other donation is the portal's."""
    return OWNED if azampay_seen or row.payment_gateway in owned_gateways else THE_PORTAL


def charge_amount(row: PortalDonation, bank_method_prefix: str) -> Decimal:
    """What AzamPay was asked to charge: the portal's mobile-money checkout sends str(int(amount)), the
    amount truncated to whole units; its bank checkout sends the amount."""
    if row.payment_method.startswith(bank_method_prefix):
        return row.amount.quantize(CENT)
    return row.amount.quantize(Decimal("1"), rounding=ROUND_DOWN).quantize(CENT)


def references_of(row: PortalDonation, references: ReferenceFormat) -> tuple[str | None, str | None]:
    """(external reference, AzamPay id learned at checkout) from transaction_id. The portal reads AzamPay's
    id from the wrong place, so its rows hold the external id it sent, `RHCI-DN-{id}-...`: a strong key,
    and no AzamPay id to poll with. Any other value is AzamPay's id."""
    value = (row.transaction_id or "").strip() or None
    if value is None:
        return None, None
    if references.donation_id(value) == row.id:
        return value, None
    if references.donation_id(value) is not None:  # another donation's reference: neither
        return None, None
    return None, value


def in_flight_reference(row: PortalDonation, stated: Iterable[str], references: ReferenceFormat) -> str | None:
    """The receiver's answer only: a callback that arrives while the portal's checkout view still waits for
    AzamPay's answer names a row that stores no reference yet. The `{prefix}-{id}-{stamp}` it states, for
    this row, stamped no earlier than the row's creation, is known (200); the fold still waits for the
    portal to store it before anything is credited (pipeline.resolution's rule, unchanged)."""
    if row.transaction_id or row.status != "PENDING" or row.payment_gateway.strip():
        return None
    for reference in stated:
        if references.donation_id(reference) == row.id and reference[-14:] >= f"{row.created_at:%Y%m%d%H%M%S}":
            return reference
    return None


def counted_patient(row: PortalDonation, patient_currency: str | None) -> int | None:
    """The patient the donation funds in azamrecon's ledger: none when its currency is not the patient's
    funding_currency (it is listed, never counted; no conversion is made)."""
    if row.patient_id is None or patient_currency is None:
        return None
    return row.patient_id if row.currency.strip().upper() == patient_currency.strip().upper() else None


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return str(value.quantize(CENT))
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def donation_facts(row: PortalDonation, patient_currency: str | None) -> dict[str, str | int | None]:
    """The facts azamrecon reads from a donation row, as recorded in the log (never a column it writes
    for the donations it owns, except the status, which tells another writer's change)."""
    return {
        "id": row.id,
        "patient_id": row.patient_id,
        "amount": _text(row.amount),
        "patient_amount": _text(row.patient_amount),
        "currency": row.currency,
        "patient_currency": patient_currency,
        "status": row.status,
        "transaction_id": row.transaction_id,
        "payment_gateway": row.payment_gateway,
        "payment_method": row.payment_method,
        "completed_at": _text(row.completed_at),
        "created_at": _text(row.created_at),
    }


def patient_facts(row: PortalPatient) -> dict[str, str | int | None]:
    return {
        "id": row.id,
        "funding_required": _text(row.funding_required),
        "funding_currency": row.funding_currency,
        "status": row.status,
    }


def facts_sha(facts: dict) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def fact_kind(
    owner: str, before: dict | None, now: dict, written_status: str | None, writing: bool, reasserted: int = 0
) -> str | None:
    """The kind of portal fact (PortalFact) `now` is after `before`, or None when nothing changed.

    A status change of an owned donation is another writer's (EXTERNAL) when azamrecon writes to the portal
    and did not write that status; in shadow mode the portal's own callback view still writes it (STATUS).
    PENDING put back over a final status azamrecon wrote is the checkout view's late save() (LATE_SAVE):
    azamrecon re-asserts its status once (pipeline/portal_write.py)."""
    if before == now:
        return None
    who = PortalFact.OWNED if owner == OWNED else PortalFact.PORTAL
    if before is None:
        what = PortalFact.SEEN
        # first seen final, and owned: another writer's (sandbox auto-complete, say) unless adoption took it
        if owner == OWNED and writing and now.get("status") not in ("PENDING", "PROCESSING"):
            what += f" {PortalFact.EXTERNAL}"
    elif before.get("status") != now.get("status"):
        ours = written_status is not None and now.get("status") == written_status
        what = PortalFact.EXTERNAL if owner == OWNED and writing and not ours else PortalFact.STATUS
        if what == PortalFact.EXTERNAL and now.get("status") == "PENDING" and written_status not in (None, "PENDING"):
            what += f" {PortalFact.LATE_SAVE}" if not reasserted else ""
    else:
        what = PortalFact.CHANGED
    mismatch = (
        now.get("patient_currency") is not None
        and str(now.get("currency", "")).upper() != str(now.get("patient_currency", "")).upper()
    )
    return f"{who} {what}" + (f" {PortalFact.CURRENCY_MISMATCH}" if mismatch and what != PortalFact.STATUS else "")


class PortalView(NamedTuple):
    """A donation's result in the portal's columns."""

    status: str
    completed_at: datetime | None
    failure_reason: str


def portal_view(status: str, completed_at: datetime | None, review_reason: str | None) -> PortalView:
    """azamrecon's status in the portal's words: EXPIRED is FAILED and REVIEW stays PENDING, each with a
    failure_reason that says so (docs/portal.md, "Status map")."""
    if status == EXPIRED:
        return PortalView("FAILED", None, "expired: no payment confirmed by AzamPay")
    if status == REVIEW:
        return PortalView("PENDING", None, f"in review: {review_reason or 'conflicting evidence'}"[:200])
    if status == COMPLETED:
        return PortalView("COMPLETED", completed_at, "")
    if status == FAILED:
        return PortalView("FAILED", None, "AzamPay reported the payment failed")
    if status == CANCELLED:
        return PortalView("CANCELLED", None, "AzamPay reported the payment cancelled")
    return PortalView(str(status), None, "")


def patient_status_after(portal_status_now: str, fully_funded: bool) -> str:
    """FULLY_FUNDED when the target is reached, and only from PUBLISHED or AWAITING_FUNDING. No status is
    ever moved back: a reversal that takes a patient under the target is listed, not undone (staff decide
    whether the patient returns to the donate list)."""
    if fully_funded and portal_status_now in FUNDABLE:
        return FULLY_FUNDED
    return portal_status_now


def mirror_values(
    row: PortalDonation,
    patient_currency: str | None,
    references: ReferenceFormat,
    bank_method_prefix: str,
    owned: bool = True,
) -> dict:
    """The static facts of azamrecon's donations row for a portal donation (same id). No reference or
    transaction_id when the portal holds none: one azamrecon's own checkout recorded is kept."""
    external_reference, azampay_id = references_of(row, references)
    _, dash, provider = row.payment_method.partition(" - ")
    values = {
        "patient_id": counted_patient(row, patient_currency),
        "amount": row.amount,
        "currency": row.currency[:3],
        "patient_amount": row.patient_amount,
        "support_amount": max(row.amount - row.patient_amount, Decimal("0")),
        "charge_amount": charge_amount(row, bank_method_prefix),
        "charge_currency": row.currency[:3],
        "provider": provider.strip()[:16] if dash and provider.strip() else None,
        "created_at": row.created_at,
    }
    # never cleared: a reference or an AzamPay id that azamrecon's own checkout recorded stays
    if external_reference is not None:
        values["external_reference"] = external_reference
    if azampay_id is not None and owned:  # another path's id (Bill Pay, Yellow Card) is no AzamPay id to poll with
        values["transaction_id"] = azampay_id
    return values
