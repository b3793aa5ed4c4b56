"""The report: the webhook guide's monitoring questions, answered from the derived state.

- completed on a day (UTC), with count and sum per currency;
- failed and cancelled on that day (when the failure, or the operator's decision, was recorded);
- donations stuck PENDING for longer than poll.threshold_minutes, with their ages;
- each patient's funding: received / required, percent and status;
- anomalies by kind, with counts and the latest examples;
- the fold's lag (events not folded yet, and how old the oldest of them is);
- the invariant check (funding_received == sum of credits; credits only for COMPLETED donations).

By default it reads the live tables in one consistent read. With `as_of` it computes the state as
known at that instant (jobs.rebuild.as_of: donations and patients created by then, events received by
then, folded in memory) and answers the same questions from it; ages are then measured at `as_of`.
Nothing is written, except by write_daily_report, which writes one JSON file.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

from loguru import logger
from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from pipeline.config import Config
from pipeline.db import transaction
from pipeline.fold import ANOMALY_KINDS, ANOMALY_MEANINGS, CANCELLED, COMPLETED, DONATION_STATUSES, FAILED, PENDING
from pipeline.models import Anomaly, Donation, FundingCredit, Patient, PaymentEvent
from pipeline.store.snapshot import DONATION_FIELDS, Snapshot
from pipeline.store.state import SqlFoldStore, fold_lag

EXAMPLES_PER_KIND = 5
LIST_LIMIT = 200  # rows kept in each donation list; the counts are always complete
CENT = Decimal("0.01")


@dataclass
class DonationView:
    """What the report needs of one donation, from the live table or an as-of snapshot."""

    id: int
    patient_id: int | None
    external_reference: str | None
    amount: Decimal
    currency: str
    patient_amount: Decimal
    created_at: datetime
    status: str
    completed_at: datetime | None
    failure_at: datetime | None
    failure_status: str | None
    operator_at: datetime | None
    operator_status: str | None

    def ended_at(self) -> datetime | None:
        """When a FAILED/CANCELLED donation became so: the operator's decision if that is what set it."""
        if self.operator_status is not None and self.operator_status == self.status:
            return self.operator_at
        return self.failure_at


@dataclass
class Facts:
    donations: list[DonationView]  # at least every donation any section can list
    status_counts: dict[str, int]
    patients: list[dict[str, Any]]  # id, name, funding_required, funding_received, status, fully_funded_at
    general_fund: Decimal
    anomaly_counts: dict[str, int]
    anomaly_examples: dict[str, list[dict[str, Any]]]
    lag_events: int
    lag_oldest: datetime | None
    violations: list[str]


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (UTC)")
    return value.astimezone(UTC)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def build_report(
    engine: Engine, config: Config, *, day: date, now: datetime, as_of: datetime | None = None, limit: int = LIST_LIMIT
) -> dict[str, Any]:
    """The report as a dict of plain values (Decimal amounts, aware datetimes); see report_json()."""
    now = _utc(now, "now")
    as_of = None if as_of is None else _utc(as_of, "as_of")
    reference = as_of or now  # ages and lag are measured at this instant
    start, end = day_bounds(day)
    threshold = timedelta(minutes=config.poll.threshold_minutes)
    stuck_before = reference - threshold
    if as_of is None:
        with transaction(engine, isolation="REPEATABLE READ") as session:
            facts = _live_facts(session, start, end, stuck_before)
    else:
        from jobs.rebuild import as_of as rebuild_as_of

        snapshot = rebuild_as_of(engine, config, as_of)
        with transaction(engine, isolation="REPEATABLE READ") as session:
            facts = _snapshot_facts(session, snapshot, as_of)

    completed = [
        d
        for d in facts.donations
        if d.status == COMPLETED and d.completed_at is not None and start <= d.completed_at < end
    ]
    failed = [d for d in facts.donations if d.status == FAILED and _within(d.ended_at(), start, end)]
    cancelled = [d for d in facts.donations if d.status == CANCELLED and _within(d.ended_at(), start, end)]
    stuck = sorted(
        (d for d in facts.donations if d.status == PENDING and d.created_at < stuck_before),
        key=lambda d: (d.created_at, d.id),
    )

    return {
        "day": day.isoformat(),
        "generated_at": now,
        "basis": "as_of" if as_of else "live",
        "as_of": as_of,
        "completed": _money_section(completed, limit, "completed_at", lambda d: d.completed_at),
        "failed": _money_section(failed, limit, "failed_at", DonationView.ended_at),
        "cancelled": _money_section(cancelled, limit, "cancelled_at", DonationView.ended_at),
        "stuck_pending": {
            "threshold_minutes": config.poll.threshold_minutes,
            "measured_at": reference,
            "count": len(stuck),
            "donations": [
                {
                    "id": d.id,
                    "external_reference": d.external_reference,
                    "amount": d.amount,
                    "currency": d.currency,
                    "created_at": d.created_at,
                    "age_seconds": int((reference - d.created_at).total_seconds()),
                    "age_minutes": round((reference - d.created_at).total_seconds() / 60, 1),
                }
                for d in stuck[:limit]
            ],
            "truncated": len(stuck) > limit,
        },
        "status_counts": {status: facts.status_counts.get(status, 0) for status in DONATION_STATUSES},
        "patients": [_patient_row(p) for p in facts.patients],
        "general_fund_received": facts.general_fund,
        "anomalies": {
            "total": sum(facts.anomaly_counts.values()),
            "by_kind": {
                kind: {
                    "count": facts.anomaly_counts[kind],
                    "meaning": ANOMALY_MEANINGS.get(kind, ""),
                    "latest": facts.anomaly_examples.get(kind, []),
                }
                for kind in sorted(
                    facts.anomaly_counts, key=lambda k: (ANOMALY_KINDS.index(k) if k in ANOMALY_KINDS else 99, k)
                )
            },
        },
        "fold_lag": {
            "events": facts.lag_events,
            "seconds": 0.0
            if facts.lag_oldest is None
            else max(0.0, round((reference - facts.lag_oldest).total_seconds(), 3)),
            "oldest_unfolded_at": facts.lag_oldest,
        },
        "invariants": {"ok": not facts.violations, "violations": facts.violations},
    }


def _within(moment: datetime | None, start: datetime, end: datetime) -> bool:
    return moment is not None and start <= moment < end


def _money_section(donations: list[DonationView], limit: int, at_name: str, at) -> dict[str, Any]:
    sums: dict[str, Decimal] = defaultdict(lambda: Decimal("0.00"))
    for d in donations:
        sums[d.currency] += d.amount
    ordered = sorted(donations, key=lambda d: (at(d), d.id))
    return {
        "count": len(donations),
        "sum": {currency: sums[currency].quantize(CENT) for currency in sorted(sums)},
        "donations": [
            {
                "id": d.id,
                "external_reference": d.external_reference,
                "patient_id": d.patient_id,
                "amount": d.amount,
                "currency": d.currency,
                at_name: at(d),
            }
            for d in ordered[:limit]
        ],
        "truncated": len(donations) > limit,
    }


def _patient_row(p: dict[str, Any]) -> dict[str, Any]:
    required, received = Decimal(p["funding_required"]), Decimal(p["funding_received"])
    percent = (received * 100 / required).quantize(CENT, rounding=ROUND_DOWN) if required > 0 else Decimal("0.00")
    return {
        "id": p["id"],
        "name": p["name"],
        "funding_received": received.quantize(CENT),
        "funding_required": required.quantize(CENT),
        "percent": percent,
        "status": p["status"],
        "fully_funded_at": p["fully_funded_at"],
    }


# -- live tables ------------------------------------------------------------------------------

_VIEW_COLUMNS = (
    Donation.id,
    Donation.patient_id,
    Donation.external_reference,
    Donation.amount,
    Donation.currency,
    Donation.patient_amount,
    Donation.created_at,
    Donation.status,
    Donation.completed_at,
    Donation.failure_at,
    Donation.failure_status,
    Donation.operator_at,
    Donation.operator_status,
)


def _live_facts(session: Session, start: datetime, end: datetime, stuck_before: datetime) -> Facts:
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
    lag_events, lag_oldest = fold_lag(session)
    violations = SqlFoldStore(session).invariant_violations()
    return Facts(
        donations, status_counts, patients, Decimal(general), counts, examples, lag_events, lag_oldest, violations
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
            select(
                Donation.id,
                Donation.patient_id,
                Donation.external_reference,
                Donation.amount,
                Donation.currency,
                Donation.patient_amount,
                Donation.created_at,
            ).where(Donation.created_at <= as_of)
        )
    }
    donations: list[DonationView] = []
    for donation_id, values in snapshot.donations.items():
        derived = dict(zip(DONATION_FIELDS, values, strict=True))
        _, patient_id, reference, amount, currency, patient_amount, created_at = static[donation_id]
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

    violations = snapshot_violations(snapshot, {d.id: d.patient_amount for d in donations})
    # The as-of state folds every event received by `as_of`: nothing is behind.
    return Facts(donations, status_counts, patients, general, dict(counts), examples, 0, None, violations)


def snapshot_violations(snapshot: Snapshot, patient_amounts: dict[int, Decimal]) -> list[str]:
    """The fold's invariants over a Snapshot (the same checks SqlFoldStore.invariant_violations runs on tables)."""
    problems: list[str] = []
    sums: dict[int, Decimal] = defaultdict(lambda: Decimal("0"))
    for patient_id, amount, _, _ in snapshot.credits.values():
        if patient_id is not None:
            sums[patient_id] += Decimal(amount)
    for patient_id, (received, _, _) in sorted(snapshot.patients.items()):
        if Decimal(received) != sums.get(patient_id, Decimal("0")):
            problems.append(
                f"patient {patient_id}: funding_received {received} != sum of credits {sums.get(patient_id, Decimal('0'))}"
            )
    status_at = DONATION_FIELDS.index("status")
    for donation_id, values in sorted(snapshot.donations.items()):
        status = values[status_at]
        credit = snapshot.credits.get(donation_id)
        credited = None if credit is None else Decimal(credit[1])
        if (credit is None and status == COMPLETED) or (
            credit is not None and (status != COMPLETED or credited != Decimal(patient_amounts[donation_id]))
        ):
            problems.append(
                f"donation {donation_id}: status {status}, credit {credited}, patient_amount {patient_amounts[donation_id]}"
            )
    return problems


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
