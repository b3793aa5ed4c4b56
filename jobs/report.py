"""The report: the webhook guide's monitoring questions, answered from the derived state.

- completed on a day (UTC), with count and sum per currency;
- failed and cancelled on that day (when the failure, or the operator's decision, was recorded);
- donations stuck PENDING for longer than poll.threshold_minutes, with their ages;
- each patient's funding: received / required, percent and status;
- anomalies by kind, with counts and the latest examples;
- the fold's lag (events not folded yet, and how old the oldest of them is): pipeline.store.metrics.fold_facts,
  which counts at most 10,000; beyond that the count is the id distance (an upper bound);
- the invariant check (funding_received == sum of credits; credits only for COMPLETED donations).

The sections are pipeline.report_sections' rules over the facts read here; the invariants are
pipeline.invariants' (on the live tables through their SQL fast path, SqlFoldStore.invariant_violations).

By default it reads the live tables in one consistent read. With `as_of` it computes the state as
known at that instant (jobs.rebuild.as_of: donations and patients created by then, events received by
then, folded in memory) and answers the same questions from it; ages are then measured at `as_of`.
Nothing is written, except by write_daily_report, which writes one JSON file.

check_facts reads what `report --check` alerts on (pipeline.report_sections.check_problems decides).
The fold's freshness is the checkpoint's updated_at: every fold that commits, even one that found
nothing to fold, saves the checkpoint, whereas job_runs records scheduled folds only when they did
something (an idle, healthy system has no recent fold row).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from loguru import logger
from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from pipeline.config import Config
from pipeline.db import transaction
from pipeline.fold import CANCELLED, COMPLETED, FAILED, PENDING, REVIEW
from pipeline.invariants import violations as invariant_violations
from pipeline.models import Anomaly, Donation, FundingCredit, Patient, PaymentEvent
from pipeline.report_sections import LIST_LIMIT, CheckFacts, DonationView, Facts, day_bounds, report_of
from pipeline.snapshot import DONATION_FIELDS, Snapshot
from pipeline.store import metrics
from pipeline.store.state import SqlFoldStore

EXAMPLES_PER_KIND = 5


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (UTC)")
    return value.astimezone(UTC)


def build_report(
    engine: Engine, config: Config, *, day: date, now: datetime, as_of: datetime | None = None, limit: int = LIST_LIMIT
) -> dict[str, Any]:
    """The report as a dict of plain values (Decimal amounts, aware datetimes); see report_json()."""
    now = _utc(now, "now")
    as_of = None if as_of is None else _utc(as_of, "as_of")
    start, end = day_bounds(day)
    stuck_before = (as_of or now) - timedelta(minutes=config.poll.threshold_minutes)
    if as_of is None:
        with transaction(engine, isolation="REPEATABLE READ") as session:
            facts = _live_facts(session, start, end, stuck_before, now)
    else:
        from jobs.rebuild import as_of as rebuild_as_of

        snapshot = rebuild_as_of(engine, config, as_of)
        with transaction(engine, isolation="REPEATABLE READ") as session:
            facts = _snapshot_facts(session, snapshot, as_of)
    return report_of(facts, day=day, now=now, as_of=as_of, threshold_minutes=config.poll.threshold_minutes, limit=limit)


# -- live tables ------------------------------------------------------------------------------

_STATIC_VIEW = 7  # id .. created_at: what an as-of report reads live, the rest from the snapshot
_VIEW_COLUMNS = (
    Donation.id,
    Donation.patient_id,
    Donation.external_reference,
    Donation.amount,
    Donation.currency,
    Donation.patient_amount,
    Donation.created_at,  # the static facts end here (_STATIC_VIEW); the derived columns follow
    Donation.status,
    Donation.completed_at,
    Donation.failure_at,
    Donation.failure_status,
    Donation.operator_at,
    Donation.operator_status,
    Donation.transaction_id,  # a static fact, last: AzamPay's id to poll with (DonationView.transaction_id)
)


def _live_facts(session: Session, start: datetime, end: datetime, stuck_before: datetime, now: datetime) -> Facts:
    # Only the rows some section can list; the sections re-apply their exact conditions.
    wanted = or_(
        and_(Donation.status == COMPLETED, Donation.completed_at >= start, Donation.completed_at < end),
        and_(
            Donation.status.in_((FAILED, CANCELLED)),
            or_(
                and_(Donation.failure_at >= start, Donation.failure_at < end),
                and_(Donation.operator_at >= start, Donation.operator_at < end),
            ),
        ),
        and_(Donation.status == PENDING, Donation.created_at < stuck_before),
    )
    donations = [DonationView(*row) for row in session.execute(select(*_VIEW_COLUMNS).where(wanted))]
    status_counts = dict(session.execute(select(Donation.status, func.count()).group_by(Donation.status)).all())
    patients = [
        dict(zip(("id", "name", "funding_required", "funding_received", "status", "fully_funded_at"), row, strict=True))
        for row in session.execute(
            select(
                Patient.id,
                Patient.name,
                Patient.funding_required,
                Patient.funding_received,
                Patient.status,
                Patient.fully_funded_at,
            ).order_by(Patient.id)
        )
    ]
    general = session.scalar(
        select(func.coalesce(func.sum(FundingCredit.amount), 0)).where(FundingCredit.patient_id.is_(None))
    )
    counts = dict(session.execute(select(Anomaly.kind, func.count()).group_by(Anomaly.kind)).all())
    examples: dict[str, list[dict[str, Any]]] = {}
    for kind in counts:
        query = (
            select(Anomaly.event_id, Anomaly.donation_id, Anomaly.detail, PaymentEvent.received_at)
            .outerjoin(PaymentEvent, PaymentEvent.id == Anomaly.event_id)
            .where(Anomaly.kind == kind)
            .order_by(Anomaly.event_id.desc(), Anomaly.id.desc())
            .limit(EXAMPLES_PER_KIND)
        )
        examples[kind] = [
            _example(event_id, donation_id, detail, received_at)
            for event_id, donation_id, detail, received_at in session.execute(query)
        ]
    fold = metrics.fold_facts(session)
    violations = SqlFoldStore(session).invariant_violations()
    return Facts(
        donations,
        status_counts,
        patients,
        Decimal(general),
        counts,
        examples,
        fold.lag_events,
        fold.oldest_unfolded,
        fold.lag_seconds(now),
        violations,
    )


def _example(event_id: int, donation_id: int | None, detail: str, received_at: datetime | None) -> dict[str, Any]:
    return {"event_id": event_id, "donation_id": donation_id, "received_at": received_at, "detail": detail}


# -- an as-of snapshot ------------------------------------------------------------------------


def _when(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _snapshot_facts(session: Session, snapshot: Snapshot, as_of: datetime) -> Facts:
    static = {
        row[0]: row
        for row in session.execute(
            select(*_VIEW_COLUMNS[:_STATIC_VIEW], Donation.transaction_id).where(Donation.created_at <= as_of)
        )
    }
    donations: list[DonationView] = []
    for donation_id, values in snapshot.donations.items():
        derived = dict(zip(DONATION_FIELDS, values, strict=True))
        _, patient_id, reference, amount, currency, patient_amount, created_at, transaction_id = static[donation_id]
        donations.append(
            DonationView(
                donation_id,
                patient_id,
                reference,
                amount,
                currency,
                patient_amount,
                created_at,
                derived["status"],
                _when(derived["completed_at"]),
                _when(derived["failure_at"]),
                derived["failure_status"],
                _when(derived["operator_at"]),
                derived["operator_status"],
                transaction_id,
            )
        )
    status_counts = dict(Counter(d.status for d in donations))
    names = {
        row[0]: row[1:]
        for row in session.execute(
            select(Patient.id, Patient.name, Patient.funding_required).where(Patient.created_at <= as_of)
        )
    }
    patients = []
    for patient_id in sorted(snapshot.patients):
        received, status, fully_funded_at = snapshot.patients[patient_id]
        name, required = names[patient_id]
        patients.append(
            {
                "id": patient_id,
                "name": name,
                "funding_required": required,
                "funding_received": Decimal(received),
                "status": status,
                "fully_funded_at": _when(fully_funded_at),
            }
        )
    general = sum(
        (Decimal(amount) for patient_id, amount, _, _ in snapshot.credits.values() if patient_id is None), Decimal("0")
    )

    counts: Counter = Counter()
    by_kind: dict[str, list[tuple]] = defaultdict(list)
    for (event_id, donation_id, kind, detail), n in snapshot.anomalies.items():
        counts[kind] += n
        by_kind[kind].extend([(event_id, donation_id, detail)] * n)
    latest = {
        kind: sorted(items, key=lambda item: item[0], reverse=True)[:EXAMPLES_PER_KIND]
        for kind, items in by_kind.items()
    }
    event_ids = sorted({item[0] for items in latest.values() for item in items})
    received = (
        dict(
            session.execute(
                select(PaymentEvent.id, PaymentEvent.received_at).where(PaymentEvent.id.in_(event_ids))
            ).all()
        )
        if event_ids
        else {}
    )
    examples = {
        kind: [_example(e, d, detail, received.get(e)) for e, d, detail in items] for kind, items in latest.items()
    }

    violations = invariant_violations(snapshot, {d.id: d.patient_amount for d in donations})
    # The as-of state folds every event received by `as_of`: nothing is behind.
    return Facts(donations, status_counts, patients, general, dict(counts), examples, 0, None, 0.0, violations)


# -- report --check -------------------------------------------------------------------------------


def check_facts(engine: Engine, config: Config, now: datetime) -> CheckFacts:
    """The facts `report --check` judges, read as /metrics reads them (pipeline.store.metrics)."""
    now = _utc(now, "now")
    with transaction(engine, isolation="REPEATABLE READ") as session:
        fold = metrics.fold_facts(session)
        jobs = metrics.job_facts(session)
        review = metrics.donations_by_open_status(session)[REVIEW]
        _, stuck = metrics.stuck_pending_counts(session, now, config.poll)
        violations = SqlFoldStore(session).invariant_violations()
    return CheckFacts(
        last_fold=metrics.fold_last_success(fold, jobs),
        lag_events=fold.lag_events,
        lag_seconds=fold.lag_seconds(now),
        spool_files=metrics.spool_files(config.receiver.spool_dir),
        spool_dir=str(config.receiver.spool_dir),
        violations=violations,
        review=review,
        stuck_pending=stuck,
    )


# -- output -----------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def report_json(report: dict[str, Any]) -> str:
    """The report as JSON: amounts as decimal strings ("75000.00"), times as ISO-8601 with offset."""
    return json.dumps(report, default=_plain, indent=2, ensure_ascii=False)


def flat_rows(report: dict[str, Any]) -> Iterable[tuple[str, str, Any]]:
    """(section, key, value) for every leaf value: key is a dotted path inside the section; list items
    are named by their `id` (else `event_id`, else position)."""

    def walk(path: str, value: Any):
        if isinstance(value, dict):
            for key, item in value.items():
                yield from walk(f"{path}.{key}" if path else str(key), item)
        elif isinstance(value, list):
            for position, item in enumerate(value):
                name = item.get("id", item.get("event_id", position)) if isinstance(item, dict) else position
                if isinstance(item, dict) and "id" not in item and "event_id" in item:
                    name = position  # several anomalies may share an event id
                yield from walk(f"{path}.{name}" if path else str(name), item)
        else:
            yield path, value

    for section, value in report.items():
        if isinstance(value, (dict, list)):
            for key, leaf in walk("", value):
                yield section, key, leaf
        else:
            yield "report", section, value


def summary_line(report: dict[str, Any]) -> str:
    """One line for logs. It avoids the guide's grep phrases ("completed successfully", "payment failed")."""
    sums = ", ".join(f"{currency} {amount}" for currency, amount in report["completed"]["sum"].items()) or "nothing"
    invariants = "OK" if report["invariants"]["ok"] else f"{len(report['invariants']['violations'])} VIOLATION(S)"
    return (
        f"Report {report['day']}: {report['completed']['count']} completed ({sums}), {report['failed']['count']} failed, "
        f"{report['cancelled']['count']} cancelled, {report['stuck_pending']['count']} stuck pending, "
        f"{report['anomalies']['total']} anomalies, fold lag {report['fold_lag']['events']} events, invariants {invariants}"
    )


def write_daily_report(engine: Engine, config: Config, now: datetime, directory: str | Path = "reports") -> Path:
    """Yesterday's (UTC) report as JSON in `directory`/report-YYYY-MM-DD.json (written atomically); logs one summary line."""
    now = _utc(now, "now")
    day = (now - timedelta(days=1)).date()
    report = build_report(engine, config, day=day, now=now)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"report-{day.isoformat()}.json"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(report_json(report) + "\n", encoding="utf-8")
    os.replace(partial, path)
    logger.info(f"{summary_line(report)} -> {path}")
    return path
