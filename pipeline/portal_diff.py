"""Where azamrecon's result differs from the portal's rows, with the reason (docs/portal.md, "Shadow mode"):
read in the caller's transaction by `azamrecon portal diff` (jobs/portal_diff.py) and `rebuild --check`.

Donations: only those azamrecon owns (the portal's own are read, never judged), as the portal would show
them after azamrecon's write (pipeline.portal_facts.portal_view); the status only, since the portal's own
callback view stamps completed_at with its own clock. Patients: azamrecon's funding against the
portal's own definition (Σ patient_amount of its COMPLETED donations in the patient's funding_currency)
and against the stored funding_received column, and FULLY_FUNDED against the target.
"""

from __future__ import annotations

from sqlalchemy import select

from pipeline.config import Config
from pipeline.fold import COMPLETED, PatientStatus
from pipeline.models import Donation, Patient, PortalDonationSeen
from pipeline.portal_facts import FULLY_FUNDED, OWNED, patient_status_after, portal_view
from pipeline.store.portal import PortalRows

COLUMNS = ("kind", "id", "field", "azamrecon", "portal", "reason")


def portal_differences(session, config: Config, informational: bool = True) -> list[dict]:
    """The differences, read in the caller's transaction; writes nothing. `rebuild --check` lists those of the
    columns azamrecon writes, without the `informational` ones (the portal's own Σ of a patient's donations,
    a patient FULLY_FUNDED under its target, donations in another currency), which no fold would change."""
    portal = PortalRows(session, config.portal)
    owned = [
        row.donation_id for row in session.scalars(select(PortalDonationSeen).where(PortalDonationSeen.owner == OWNED))
    ]
    return _donations(session, portal, owned) + _patients(session, portal, informational)


def difference_line(row: dict) -> str:
    return (
        f"portal {row['kind']} {row['id']} {row['field']}: azamrecon {row['azamrecon']}, portal {row['portal']} "
        f"({row['reason']})"
    )


def _donations(session, portal: PortalRows, owned: list[int]) -> list[dict]:
    found = []
    theirs = {row.id: row for row in portal.donations_by_ids(owned)}
    for mine in session.scalars(select(Donation).where(Donation.id.in_(owned)).order_by(Donation.id)):
        row = theirs.get(mine.id)
        if row is None:
            found.append(_row("donation", mine.id, "row", "present", "deleted", "deleted in the portal"))
            continue
        view = portal_view(mine.status, mine.completed_at, mine.review_reason)
        if view.status != row.status:
            found.append(_row("donation", mine.id, "status", view.status, row.status, _status_reason(mine, row.status)))
    return found


def _status_reason(mine: Donation, theirs: str) -> str:
    if mine.status == COMPLETED:
        return f"AzamPay success (log event {mine.credit_event_id}) not applied by the portal"
    if theirs == COMPLETED:
        return "the portal completed it without a trusted AzamPay success in the log (manual update, forged callback?)"
    if mine.status == "REVIEW":
        return f"azamrecon holds it in REVIEW: {mine.review_reason}"
    if mine.status == "EXPIRED":
        return "no payment confirmed by AzamPay before it expired"
    return f"azamrecon's log says {mine.status}"


def _patients(session, portal: PortalRows, informational: bool) -> list[dict]:
    found = []
    theirs = portal.all_patients()
    funding = portal.own_funding(theirs)
    if informational:
        found += _other_currencies(portal, theirs)
    for mine in session.scalars(select(Patient).where(Patient.id.in_(list(theirs))).order_by(Patient.id)):
        row = theirs[mine.id]
        if informational and mine.funding_received != funding[mine.id]:
            detail = (
                "Σ patient_amount of its COMPLETED donations in its funding_currency differs: see the donation rows"
            )
            found.append(_row("patient", mine.id, "funding", mine.funding_received, funding[mine.id], detail))
        if row.funding_received != mine.funding_received:
            found.append(
                _row(
                    "patient",
                    mine.id,
                    "funding_received",
                    mine.funding_received,
                    row.funding_received,
                    "the stored column is stale (the portal's API no longer reads it)",
                )
            )
        status = patient_status_after(row.status, mine.status == PatientStatus.FULLY_FUNDED)
        if status != row.status:
            found.append(_row("patient", mine.id, "status", status, row.status, "target reached"))
        elif informational and row.status == FULLY_FUNDED and mine.status != PatientStatus.FULLY_FUNDED:
            # never moved back by azamrecon (pipeline.portal_facts.patient_status_after): listed for staff
            reason = "FULLY_FUNDED in the portal while under the target; staff decide whether it returns"
            found.append(_row("patient", mine.id, "status", mine.status, row.status, reason))
    return found


def _other_currencies(portal: PortalRows, patients: dict) -> list[dict]:
    """Per patient and currency, the COMPLETED donations in another currency than its funding_currency: never
    counted by azamrecon (each a `currency_mismatch` anomaly), while a plain Σ patient_amount would add them."""
    found = []
    for (patient_id, currency), total in sorted(portal.completed_sums().items()):
        patient = patients.get(patient_id)
        if patient is not None and currency != patient.funding_currency.upper():
            reason = f"COMPLETED donations in {currency}, not its funding_currency {patient.funding_currency}"
            found.append(_row("patient", patient_id, f"other currency {currency}", "not counted", total, reason))
    return found


def _row(kind, identifier, field, ours, theirs, reason) -> dict:
    return dict(zip(COLUMNS, (kind, identifier, field, ours, theirs, reason), strict=True))


def portal_as_of(session, data: dict) -> dict:
    """`rebuild --as-of` in portal mode: the portal columns azamrecon owns, as it would have written them at
    that instant, from the as-of state (`data`: Snapshot.as_dict()). Donations azamrecon owns only; a patient's
    status only where azamrecon moves it (FULLY_FUNDED), every other status being the portal's."""
    owned = set(session.scalars(select(PortalDonationSeen.donation_id).where(PortalDonationSeen.owner == OWNED)).all())
    donations = {}
    for key, state in data["donations"].items():
        if int(key) in owned:
            view = portal_view(state["status"], state["completed_at"], state["review_reason"])
            donations[key] = {
                "status": view.status,
                "completed_at": view.completed_at,
                "failure_reason": view.failure_reason,
            }
    patients = {
        key: {
            "funding_received": state["funding_received"],
            "status": FULLY_FUNDED if state["status"] == PatientStatus.FULLY_FUNDED else None,
        }
        for key, state in data["patients"].items()
    }
    return {"donations": donations, "patients": patients}
