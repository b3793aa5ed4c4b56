"""Portal mode's write rule (docs/portal.md, "What azamrecon writes"): the fold's results into the portal's rows,
inside the caller's transaction: each fold batch's (jobs/fold.py, so the portal's rows change with the batch
and its checkpoint, or not at all) and `azamrecon portal apply`'s short batches (jobs/portal_write.py).

Each value is written only when it differs, and each write is a compare-and-set: a donation's status against
the value azamrecon last wrote (or, before its first write, PENDING: a checkout's start); a patient's against
the values read in the same transaction. A write that finds another value is skipped: the next read records
who changed it (pipeline.portal_record). One exception, the portal checkout view's late save(), which puts
back the PENDING it read before the callback: re-asserted once, and recorded.

Shadow mode (portal.write: false) writes nothing; `azamrecon portal diff` shows what would be written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from pipeline.config import Config
from pipeline.fold import COMPLETED, PENDING, REFUNDED, PatientStatus, Source
from pipeline.models import Donation, Patient, PaymentEvent, PortalDonationSeen
from pipeline.portal_facts import OWNED, facts_sha, patient_status_after, portal_view
from pipeline.store.portal import PortalRows, portal_naive

BANK_OPERATORS = ("CRDB", "NMB")  # AzamPay's bank checkout names the bank as the callback's operator


@dataclass
class WriteReport:
    donations_written: int = 0
    patients_written: int = 0
    skipped: int = 0  # another value found: the compare-and-set refused
    reasserted: int = 0


def write_portal(
    session: Session, config: Config, donation_ids, patient_ids, now: datetime, report: WriteReport | None = None
) -> WriteReport:
    """Write the results of these donations (those azamrecon owns) and patients to the portal's rows."""
    report = report or WriteReport()
    if not config.portal.write:
        return report
    portal = PortalRows(session, config.portal)
    _write_donations(session, config, portal, sorted(set(donation_ids)), now, report)
    _write_patients(session, config, portal, sorted(set(patient_ids)), now, report)
    return report


def _write_donations(session, config, portal: PortalRows, ids: list[int], now, report: WriteReport) -> None:
    if not ids:
        return
    seen = {
        row.donation_id: row
        for row in session.scalars(select(PortalDonationSeen).where(PortalDonationSeen.donation_id.in_(ids)))
    }
    owned = [donation_id for donation_id in ids if donation_id in seen and seen[donation_id].owner == OWNED]
    if not owned:
        return
    ours = {row.id: row for row in session.scalars(select(Donation).where(Donation.id.in_(owned)))}
    current = {row.id: row for row in portal.donations_by_ids(owned)}
    deciding = [row.credit_event_id for row in ours.values() if row.credit_event_id]
    deciding += [row.operator_event_id for row in ours.values() if row.operator_event_id]
    success = _success_events(session, deciding)
    sources = {event_id: found[2] for event_id, found in success.items()}
    columns, table = config.portal.donation_columns, portal.donations_table
    q = portal.q
    for donation_id in owned:
        mine, theirs, record = ours.get(donation_id), current.get(donation_id), seen[donation_id]
        if mine is None or theirs is None:  # deleted in the portal: the next full read notices
            continue
        target = portal_view(mine.status, mine.completed_at, mine.review_reason)
        event = success.get(mine.credit_event_id)
        if _portal_decided(mine, sources) or target.status == REFUNDED:
            continue  # the portal's own truth (adoption, a refund): its values stand, completed_at and reason too
        written = json.loads(record.written) if record.written else {}
        facts = json.loads(record.facts)
        expected = written.get("status", facts.get("status"))
        if (theirs.status, theirs.failure_reason) == (target.status, target.failure_reason) and (
            portal_naive(theirs.completed_at) == portal_naive(target.completed_at)
        ):
            if expected != theirs.status:  # agreeing again (a refund taken, a poll that confirmed): from here on
                record.written = json.dumps({"status": theirs.status})
            continue
        if target.status == PENDING and theirs.status != PENDING:
            report.skipped += 1  # azamrecon has no evidence either way: it never puts PENDING over a status
            continue
        clobbered = theirs.status == "PENDING" and expected not in (None, "PENDING")
        if theirs.status != expected:
            if not (clobbered and record.reasserted == 0):
                report.skipped += 1
                continue
            record.reasserted += 1  # the read that saw the PENDING recorded it (a `late_save` fact)
            report.reasserted += 1
            expected = "PENDING"
        values = {
            columns.status: target.status,
            columns.completed_at: portal_naive(target.completed_at),
            columns.failure_reason: target.failure_reason,
            columns.updated_at: portal_naive(now),
        }
        fills = {}  # written only where the portal's column is still empty, checked by the UPDATE itself
        if target.status == COMPLETED and event is not None and event[2] == Source.CALLBACK:
            reference, operator, _ = event
            if reference and not theirs.gateway_reference:
                fills[columns.gateway_reference] = reference[:200]
            if not theirs.payment_gateway:
                fills[columns.payment_gateway] = "Azam Pay"
            if operator and not theirs.payment_method:
                kind = "Bank Transfer" if operator.upper() in BANK_OPERATORS else "Mobile Money"
                fills[columns.payment_method] = f"{kind} - {operator}"[:255]
        assignments = [f"{q(name)} = :v{n}" for n, name in enumerate(values)]
        assignments += [
            f"{q(name)} = CASE WHEN {q(name)} IS NULL OR {q(name)} = '' THEN :f{n} ELSE {q(name)} END"
            for n, name in enumerate(fills)
        ]
        assignments = ", ".join(assignments)
        params = {f"v{n}": value for n, value in enumerate(values.values())}
        params.update((f"f{n}", value) for n, value in enumerate(fills.values()))
        params.update(id=donation_id, expected=expected)
        done = session.execute(
            text(f"UPDATE {table} SET {assignments} WHERE {q(columns.id)} = :id AND {q(columns.status)} = :expected"),
            params,
        ).rowcount
        if not done:
            report.skipped += 1
            continue
        report.donations_written += 1
        record.written = json.dumps({"status": target.status})
        # what the row now holds, so the next read does not record azamrecon's own write as a change
        facts = {**facts, "status": target.status, "completed_at": _iso(target.completed_at)}
        for key in ("payment_gateway", "payment_method"):
            if getattr(columns, key) in fills:
                facts[key] = fills[getattr(columns, key)]
        record.facts, record.facts_sha = json.dumps(facts), facts_sha(facts)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _portal_decided(mine: Donation, sources: dict[int, str]) -> bool:
    """Whether the donation's status is a decision the portal's own rows made (adoption, a refund)."""
    return mine.operator_status is not None and sources.get(mine.operator_event_id) in (Source.PORTAL, Source.ADOPT)


def _success_events(session: Session, event_ids: list[int]) -> dict[int, tuple[str | None, str | None, str]]:
    """event id -> (AzamPay's transaction id it states, its operator, its source)."""
    if not event_ids:
        return {}
    rows = session.execute(
        select(PaymentEvent.id, PaymentEvent.transaction_ref, PaymentEvent.operator, PaymentEvent.source).where(
            PaymentEvent.id.in_(event_ids)
        )
    )
    return {row.id: (row.transaction_ref, row.operator, row.source) for row in rows}


def _write_patients(session, config, portal: PortalRows, ids: list[int], now, report: WriteReport) -> None:
    if not ids:
        return
    ours = {row.id: row for row in session.scalars(select(Patient).where(Patient.id.in_(ids)))}
    current = portal.patients_by_ids(ids)
    columns, table, q = config.portal.patient_columns, portal.patients_table, portal.q
    for patient_id in ids:
        mine, theirs = ours.get(patient_id), current.get(patient_id)
        if mine is None or theirs is None:
            continue
        status = patient_status_after(theirs.status, mine.status == PatientStatus.FULLY_FUNDED)
        if (theirs.funding_received, theirs.status) == (mine.funding_received, status):
            continue
        done = session.execute(
            text(
                f"UPDATE {table} SET {q(columns.funding_received)} = :received, {q(columns.status)} = :status, "
                f"{q(columns.updated_at)} = :now WHERE {q(columns.id)} = :id "
                f"AND {q(columns.funding_received)} = :was AND {q(columns.status)} = :was_status"
            ),
            {
                "received": str(mine.funding_received),  # Django's SQLite columns take no Decimal binding
                "status": status,
                "now": portal_naive(now),
                "id": patient_id,
                "was": str(theirs.funding_received),
                "was_status": theirs.status,
            },
        ).rowcount
        if done:
            report.patients_written += 1
        else:
            report.skipped += 1
