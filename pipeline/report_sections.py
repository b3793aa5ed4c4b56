"""The report's sections from its facts: which donations completed, failed or were cancelled on a day,
which are stuck PENDING, each patient's percent, the anomalies by kind, the lag and the invariants; and
the problems `report --check` alerts on (check_problems).

Pure: jobs/report.py reads the facts (the live tables, or a state as of an instant) and writes the output.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

from pipeline.anomaly_kinds import ANOMALY_KINDS, ANOMALY_MEANINGS
from pipeline.fold import (
    CANCELLED,
    CENT,
    COMPLETED,
    DONATION_STATUSES,
    FAILED,
    PENDING,
    REFUNDED,
)
from pipeline.sections import AlertsConfig

LIST_LIMIT = 200  # rows kept in each donation list; the counts are always complete


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
    transaction_id: str | None = None  # AzamPay's id learned at checkout: without one, nothing to poll with

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
    lag_events: int  # pipeline.store.metrics.FoldFacts: from 10,000 on, the id distance (an upper bound)
    lag_oldest: datetime | None
    lag_seconds: float  # FoldFacts.lag_seconds at the report's instant
    violations: list[str]


@dataclass
class CheckFacts:
    """What `report --check` looks at, read live (jobs.report.check_facts)."""

    last_fold: datetime | None  # the newest successful fold: the checkpoint's updated_at, or an ok fold run
    lag_events: int
    lag_seconds: float  # age of the oldest unfolded event (FoldFacts.lag_seconds)
    spool_files: int  # non-empty spool files not yet ingested
    spool_dir: str
    violations: list[str]
    review: int  # donations in REVIEW
    stuck_pending: int  # donations PENDING past poll.max_age_hours


MAX_VIOLATION_LINES = 10


def check_problems(facts: CheckFacts, alerts: AlertsConfig, now: datetime, max_age_hours: float) -> list[str]:
    """One line per problem, in a fixed order; empty when every check passes."""
    problems = []
    if facts.last_fold is None:
        problems.append("fold stale: no successful fold recorded (is `azamrecon scheduler` running?)")
    else:
        idle = (now - facts.last_fold).total_seconds()
        if idle > alerts.fold_stale_seconds:
            problems.append(
                f"fold stale: last successful fold {idle:.0f} s ago, at {facts.last_fold.isoformat()} "
                f"(alerts.fold_stale_seconds {alerts.fold_stale_seconds:g})"
            )
    if facts.lag_seconds > alerts.max_lag_seconds:
        problems.append(
            f"fold lag: oldest unfolded event {facts.lag_seconds:.0f} s old, {facts.lag_events} event(s) unfolded "
            f"(alerts.max_lag_seconds {alerts.max_lag_seconds:g})"
        )
    if facts.spool_files:
        problems.append(
            f"spool not empty: {facts.spool_files} file(s) in {facts.spool_dir} (the scheduler replays them; "
            "`azamrecon events ingest-spool` does it now)"
        )
    for violation in facts.violations[:MAX_VIOLATION_LINES]:
        problems.append(f"invariant failing: {violation}")
    if len(facts.violations) > MAX_VIOLATION_LINES:
        problems.append(f"invariant failing: {len(facts.violations) - MAX_VIOLATION_LINES} more violation(s)")
    if facts.review > alerts.max_review:
        problems.append(f"REVIEW: {facts.review} donation(s) in REVIEW (alerts.max_review {alerts.max_review})")
    if facts.stuck_pending > alerts.max_stuck_pending:
        problems.append(
            f"stuck PENDING: {facts.stuck_pending} donation(s) PENDING for more than {max_age_hours:g} h "
            f"(poll.max_age_hours; alerts.max_stuck_pending {alerts.max_stuck_pending})"
        )
    return problems


def check_ok_line(facts: CheckFacts, now: datetime) -> str:
    since = "never" if facts.last_fold is None else f"{(now - facts.last_fold).total_seconds():.1f} s ago"
    return (
        f"ok: last fold {since}, {facts.lag_events} event(s) unfolded, spool empty, invariants OK, "
        f"{facts.review} REVIEW, {facts.stuck_pending} stuck PENDING"
    )


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


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


def percent_funded(received: Decimal, required: Decimal) -> Decimal | None:
    """The share of the target received, rounded down to the cent (99.996% never reads 100); None without a
    target. The report and `patients show` both print this."""
    return (received * 100 / required).quantize(CENT, rounding=ROUND_DOWN) if required > 0 else None


def _patient_row(p: dict[str, Any]) -> dict[str, Any]:
    required, received = Decimal(p["funding_required"]), Decimal(p["funding_received"])
    percent = percent_funded(received, required)
    return {
        "id": p["id"],
        "name": p["name"],
        "funding_received": received.quantize(CENT),
        "funding_required": required.quantize(CENT),
        "percent": percent,
        "status": p["status"],
        "fully_funded_at": p["fully_funded_at"],
    }


def report_of(
    facts: Facts,
    *,
    day: date,
    now: datetime,
    as_of: datetime | None,
    threshold_minutes: float,
    limit: int = LIST_LIMIT,
) -> dict[str, Any]:
    """The report as a dict of plain values (Decimal amounts, aware datetimes). Ages and the lag are
    measured at `as_of` when given, else at `now`."""
    reference = as_of or now
    start, end = day_bounds(day)
    stuck_before = reference - timedelta(minutes=threshold_minutes)
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
            "threshold_minutes": threshold_minutes,
            "measured_at": reference,
            "count": len(stuck),
            # never expired without a poll answer in portal mode (pipeline.status_check.rows_for): docs/portal.md
            "unpollable": sum(1 for d in stuck if not d.transaction_id),
            "donations": [
                {
                    "id": d.id,
                    "external_reference": d.external_reference,
                    "amount": d.amount,
                    "currency": d.currency,
                    "created_at": d.created_at,
                    "age_seconds": int((reference - d.created_at).total_seconds()),
                    "age_minutes": round((reference - d.created_at).total_seconds() / 60, 1),
                    "pollable": bool(d.transaction_id),
                }
                for d in stuck[:limit]
            ],
            "truncated": len(stuck) > limit,
        },
        "status_counts": {status: facts.status_counts.get(status, 0) for status in DONATION_STATUSES}
        | ({REFUNDED: facts.status_counts[REFUNDED]} if facts.status_counts.get(REFUNDED) else {}),
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
            "seconds": round(facts.lag_seconds, 3),
            "oldest_unfolded_at": facts.lag_oldest,
        },
        "invariants": {"ok": not facts.violations, "violations": facts.violations},
    }
