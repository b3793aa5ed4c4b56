"""What `azamrecon portal adopt` checks before the cutover (docs/portal.md, "Adoption"): sandbox auto-complete at
work in the portal's rows, and where the portal disagrees with itself. Read in the caller's transaction.
"""

from __future__ import annotations

from datetime import timedelta

from pipeline.config import Config
from pipeline.fold_batch import counting_callback_auth
from pipeline.portal_facts import FULLY_FUNDED
from pipeline.store.portal import PortalRows, SeenRows

AUTO_COMPLETE_SECONDS = 10  # the portal's sandbox checkout completes in the same request that created the row
COLUMNS = ("kind", "id", "field", "value", "expected", "detail")


def auto_completed(session, config: Config, portal: PortalRows) -> list[int]:
    """COMPLETED AzamPay donations completed within seconds of creation that no callback named."""
    quick = [
        row.id
        for rows in portal.all_donations()
        for row in rows
        if row.status == "COMPLETED"
        and row.payment_gateway in config.portal.owned_gateways
        and row.completed_at is not None
        and row.completed_at - row.created_at <= timedelta(seconds=AUTO_COMPLETE_SECONDS)
    ]
    named = (
        SeenRows(session).azampay_named(quick, config.donations.reference_prefix, counting_callback_auth(config))
        if quick
        else set()
    )
    return [donation_id for donation_id in quick if donation_id not in named]


def inconsistencies(portal: PortalRows) -> list[dict]:
    """Where the portal disagrees with itself: the stored funding_received against Σ patient_amount of the
    patient's COMPLETED donations in its funding_currency, FULLY_FUNDED against that sum, and COMPLETED
    donations with no transaction id."""
    found = []
    patients = portal.all_patients()
    funding = portal.own_funding(patients)
    for patient in patients.values():
        total = funding[patient.id]
        if patient.funding_received != total:
            detail = "stored column differs from Σ patient_amount of its COMPLETED donations"
            found.append(_row("patient", patient.id, "funding_received", patient.funding_received, total, detail))
        reached = total >= patient.funding_required if patient.funding_required else total > 0
        if (patient.status == FULLY_FUNDED) != reached and patient.status in (
            FULLY_FUNDED,
            "PUBLISHED",
            "AWAITING_FUNDING",
        ):
            detail = (
                "FULLY_FUNDED under its target"
                if patient.status == FULLY_FUNDED
                else "target reached, not FULLY_FUNDED"
            )
            found.append(
                _row(
                    "patient", patient.id, "status", patient.status, f"Σ {total} of {patient.funding_required}", detail
                )
            )
    for rows in portal.all_donations():
        for row in rows:
            if row.status == "COMPLETED" and not (row.transaction_id or "").strip():
                found.append(
                    _row("donation", row.id, "transaction_id", None, "an id", "COMPLETED without a transaction id")
                )
    return found


def _row(kind, identifier, name, value, expected, detail) -> dict:
    return dict(zip(COLUMNS, (kind, identifier, name, value, expected, detail), strict=True))
