"""Portal mode's read rule (docs/portal.md, "Facts in the log"): the Django portal's donation and patient rows
-> facts in the log, inside the caller's transaction (which holds the fold lock, so two recorders never
record one change twice).

A first sight or a change is appended to the log as a `portal` event (the facts in its body, their kind in
`operator`: pipeline.fold.PortalFact), and the mirror row the fold reads (azamrecon's own donations and
patients tables, same ids) is brought up to date. jobs/portal_sync.py runs it before every fold; `portal adopt`
and a checkout through azamrecon (pipeline/checkout.py) run it too. Nothing here writes to a portal table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from pipeline.config import Config
from pipeline.events import EventFields
from pipeline.fold import NOT_APPLICABLE, PortalFact, Source
from pipeline.fold_batch import counting_callback_auth, reference_format
from pipeline.portal_facts import (
    DELETED,
    FINAL_PORTAL_STATUSES,
    OWNED,
    PortalDonation,
    donation_facts,
    fact_kind,
    facts_sha,
    mirror_values,
    owner_of,
    patient_facts,
    portal_status,
    undecided,
)
from pipeline.store.events import append_events, event_row
from pipeline.store.portal import PortalRows, SeenRows

MAX_GAP_SPAN = 10_000  # a jump in the portal's ids wider than this is not in-flight inserts: not awaited
UNDECIDED = "undecided"  # in portal_sync.gaps: a row read but not recorded yet (pipeline.portal_facts.undecided)


@dataclass
class SyncReport:
    full: bool = False
    donations_read: int = 0
    facts_recorded: int = 0
    patients_recorded: int = 0
    undecided: int = 0
    adopted: int = 0
    deleted: list[int] = field(default_factory=list)  # recorded donations no longer in the portal
    owned: list[int] = field(default_factory=list)  # donations first seen this run, by owner
    theirs: list[int] = field(default_factory=list)
    external: list[int] = field(default_factory=list)  # owned donations another writer changed


def record_portal(
    session: Session, config: Config, now: datetime, *, full: bool = False, adopt: bool = False
) -> SyncReport:
    """sync_portal's work inside the caller's transaction (which holds the fold lock). adopt=True (`portal
    adopt`, before the receiver takes traffic): a row first seen in a final status is recorded as the
    portal's truth at cutover, an `adopt` event, which the fold takes as a decision."""
    portal, seen = PortalRows(session, config.portal), SeenRows(session)
    state = seen.sync_state()
    full = (
        full
        or state.scanned_at is None
        or now - state.scanned_at >= timedelta(seconds=config.portal.scan_interval_seconds)
    )
    report = SyncReport(full=full)
    awaited = {int(key): value for key, value in json.loads(state.gaps or "{}").items()}
    chunks = portal.all_donations() if full else [_recent_rows(portal, seen, state.donation_high, awaited, now)]
    highest = state.donation_high
    present: set[int] = set()
    undecided_ids: set[int] = set()
    for rows in chunks:
        report.donations_read += len(rows)
        present.update(row.id for row in rows)
        undecided_ids |= _record_donations(session, config, portal, seen, rows, now, report, adopt)
        highest = max([highest, *(row.id for row in rows)])
    awaited = _still_awaited(awaited, state.donation_high, highest, present, now, config)
    # rows still undecided are read again next time, until they are recorded
    awaited.update((donation_id, UNDECIDED) for donation_id in undecided_ids)
    state.gaps, state.donation_high = json.dumps(awaited), highest
    if full:
        state.scanned_at = now
        _record_deletions(session, seen, present, now, report)
    return report


def _recent_rows(portal: PortalRows, seen: SeenRows, high: int, awaited: dict, now: datetime) -> list[PortalDonation]:
    """Between two full comparisons: the rows above the high mark, the ids below it still awaited (on MySQL a
    row can commit after a higher id was read), and the recorded rows an unmatched callback of the last hour
    names (the portal's save of a checkout that a callback overtook)."""
    rows = portal.donations_above(high)
    again = (set(awaited) | seen.waiting_donation_ids(now - timedelta(hours=1))) - {row.id for row in rows}
    return sorted(rows + portal.donations_by_ids(again), key=lambda row: row.id) if again else rows


def _still_awaited(awaited: dict, high: int, highest: int, present: set[int], now: datetime, config: Config) -> dict:
    """The portal ids missing below the highest read (an INSERT not committed yet, or a rolled-back one),
    awaited for fold.gap_timeout_seconds, at most fold.max_gaps of them, as the fold awaits its own."""
    expiry = (now - timedelta(seconds=config.fold.gap_timeout_seconds)).isoformat()
    kept = {
        key: seen_at
        for key, seen_at in awaited.items()
        if key not in present and seen_at != UNDECIDED and seen_at >= expiry
    }
    if highest - high <= MAX_GAP_SPAN:
        kept.update((key, now.isoformat()) for key in range(high + 1, highest) if key not in present)
    newest = sorted(kept)[-config.fold.max_gaps :]
    return {key: kept[key] for key in newest}


def _record_deletions(session: Session, seen: SeenRows, present: set[int], now: datetime, report: SyncReport) -> None:
    """A recorded donation no longer in the portal (an admin deleted it) is a fact too: it counts no more,
    as the portal's own sum over its rows no longer counts it (docs/portal.md, "The portal's own edits")."""
    gone = [record for record in seen.recorded_donations() if record.donation_id not in present]
    events = []
    for record in gone:
        facts = json.loads(record.facts)
        if facts.get("status") == DELETED:
            continue
        facts = {**facts, "status": DELETED}
        kind = f"{PortalFact.OWNED if record.owner == OWNED else PortalFact.PORTAL} {PortalFact.DELETED}"
        record.facts, record.facts_sha = json.dumps(facts), facts_sha(facts)
        events.append(_fact_row(facts, kind, now, donation_id=record.donation_id, status=DELETED, amount=None))
        report.deleted.append(record.donation_id)
    session.flush()
    append_events(session, events)
    report.facts_recorded += len(events)


def _record_donations(
    session: Session,
    config: Config,
    portal: PortalRows,
    seen: SeenRows,
    rows: list[PortalDonation],
    now,
    report,
    adopt: bool = False,
    also_named: set[int] = frozenset(),
) -> set[int]:
    """Record the facts of these rows that are new or changed; the ids left undecided."""
    settings, references = config.portal, reference_format(config)
    known = seen.seen_donations(row.id for row in rows)
    patients = portal.patients_by_ids({row.patient_id for row in rows if row.patient_id is not None})
    _record_patients(session, seen, patients, now, report)
    fresh = [row for row in rows if row.id not in known]
    named = set(also_named) | seen.azampay_named(
        [row.id for row in fresh if undecided(row) and row.id not in also_named],
        config.donations.reference_prefix,
        counting_callback_auth(config),
    )
    cutoff = now - timedelta(hours=config.poll.max_age_hours)
    left, events, mirrors, new_records, changed_records = set(), [], {}, [], []
    for row in rows:
        record = known.get(row.id)
        if record is None and undecided(row) and row.id not in named and row.created_at > cutoff:
            report.undecided += 1
            left.add(row.id)
            continue
        patient = patients.get(row.patient_id) if row.patient_id is not None else None
        facts = donation_facts(row, patient.funding_currency if patient else None)
        if record is not None and record.facts_sha == facts_sha(facts):
            continue
        owner = record.owner if record else owner_of(row, settings.owned_gateways, row.id in named)
        written = json.loads(record.written) if record and record.written else {}
        # before its first write, azamrecon's compare-and-set expects the status it first saw (the write never
        # puts PENDING over another status: pipeline.portal_write)
        adopted = adopt and record is None and row.status in FINAL_PORTAL_STATUSES
        baseline = written.get("status", None if record else row.status)
        if adopted:
            kind = f"{PortalFact.OWNED if owner == OWNED else PortalFact.PORTAL} {PortalFact.ADOPT}"
        else:
            kind = fact_kind(
                owner,
                json.loads(record.facts) if record else None,
                facts,
                baseline,
                settings.write,
                record.reasserted if record else 0,
            )
        if kind is None:
            continue
        if record is None:
            (report.owned if owner == OWNED else report.theirs).append(row.id)
        elif "external" in kind.split():
            report.external.append(row.id)
        mirrors[row.id] = mirror_values(
            row, facts["patient_currency"], references, settings.bank_method_prefix, owner == OWNED
        )
        if record is None:
            new_records.append(seen.new_record(row.id, owner, facts, facts_sha(facts), baseline))
        else:
            changed_records.append((record, facts, facts_sha(facts)))
        source = Source.ADOPT if adopted else Source.PORTAL
        events.append(
            _fact_row(
                facts, kind, now, donation_id=row.id, status=portal_status(row.status), amount=row.amount, source=source
            )
        )
        report.adopted += adopted
    session.flush()
    seen.mirror_donations(mirrors)
    seen.record_donations(new_records, changed_records)
    append_events(session, events)
    report.facts_recorded += len(events)
    return left


def record_rows(
    session: Session, config: Config, rows: list[PortalDonation], now: datetime, named: set[int]
) -> SyncReport:
    """Record these rows now, those in `named` as named by an AzamPay checkout of azamrecon's (pipeline.checkout)."""
    report = SyncReport()
    _record_donations(
        session, config, PortalRows(session, config.portal), SeenRows(session), rows, now, report, also_named=named
    )
    return report


def _record_patients(session: Session, seen: SeenRows, patients: dict, now: datetime, report: SyncReport) -> None:
    known = seen.seen_patients(patients)
    events = []
    for patient_id, row in patients.items():
        facts = patient_facts(row)
        record = known.get(patient_id)
        if record is not None and record.facts_sha == facts_sha(facts):
            continue
        seen.mirror_patient(row, now)
        seen.record_patient(patient_id, facts, facts_sha(facts), record)
        kind = "patient seen" if record is None else "patient changed"
        event = _fact_row(facts, kind, now, status=None, amount=row.funding_required)
        event["patient_id"] = patient_id
        events.append(event)
    session.flush()
    append_events(session, events)
    report.patients_recorded += len(events)


def _fact_row(
    facts: dict, kind: str, now: datetime, *, status, amount, donation_id: int | None = None, source=Source.PORTAL
) -> dict:
    body = json.dumps({"kind": kind, **facts}, sort_keys=True).encode()
    fields = EventFields(status=status, status_raw=facts.get("status"), amount=amount, operator=kind)
    return event_row(
        source=source, body=body, received_at=now, auth=NOT_APPLICABLE, fields=fields, donation_id=donation_id
    )
