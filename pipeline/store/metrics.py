"""Read-only facts for /metrics, `report` and `report --check`: each is an indexed lookup or a count over a
capped range, never a count of the log, which grows without end (docs/monitoring.md lists each one's cost).

fold_facts is the one reading of the fold's lag (events and seconds) for all of them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from pipeline.fold import PENDING, REVIEW
from pipeline.invariants import is_violation_error
from pipeline.models import (
    Anomaly,
    Donation,
    EventCount,
    JobRun,
    PaymentEvent,
    RunOutcome,
    WaitingKey,
    utc_from_db,
)
from pipeline.resolution import WAITING_KINDS
from pipeline.sections import PollConfig
from pipeline.status_check import past_max_age
from pipeline.store.checkpoint import fold_position
from pipeline.store.spool import CLAIMED_SUFFIX, SUFFIX

# rows a count reads at most; past it the count reads CAP (a gauge says "at least"), and the fold lag in
# events falls back to the id distance
CAP = 10_000
# the anomaly counts stop sooner: each row read is an index lookup, and past a thousand the number only says
# "many", which is what an alert needs
ANOMALY_CAP = 1_000
OPEN_STATUSES = (PENDING, REVIEW)  # the donation statuses /metrics counts: each is a short queue


@dataclass
class FoldFacts:
    position: int
    lag_events: int
    oldest_unfolded: datetime | None
    last_success: datetime | None  # the checkpoint's last save: every successful batch, idle ones too
    tail: dict[tuple[str, str], int]  # unfolded events (up to CAP) by (source, auth)

    def lag_seconds(self, now: datetime) -> float:
        """Age of the oldest unfolded event at `now`, never below 0; 0 when nothing is behind."""
        return max(0.0, (now - self.oldest_unfolded).total_seconds()) if self.oldest_unfolded else 0.0


def fold_facts(session: Session) -> FoldFacts:
    """The checkpoint row, then at most CAP events after its position (a primary-key range). lag_events is
    exact up to CAP; from CAP on it is MAX(id) minus the position (an upper bound: ids may skip)."""
    position, updated = fold_position(session)
    window = (
        select(PaymentEvent.source, PaymentEvent.auth, PaymentEvent.received_at)
        .where(PaymentEvent.id > position)
        .order_by(PaymentEvent.id)
        .limit(CAP)
        .subquery()
    )
    tail: dict[tuple[str, str], int] = {}
    oldest = None
    for source, auth, count, first in session.execute(
        select(window.c.source, window.c.auth, func.count(), func.min(window.c.received_at)).group_by(
            window.c.source, window.c.auth
        )
    ):
        tail[(source, auth)] = count
        oldest = first if oldest is None or first < oldest else oldest
    lag = sum(tail.values())
    if lag >= CAP:  # a long stop: the distance in ids (an upper bound, ids may skip) instead of a count
        lag = max(lag, (session.scalar(select(func.max(PaymentEvent.id))) or 0) - position)
    return FoldFacts(position, lag, utc_from_db(oldest), updated, tail)


def events_by_source_and_auth(session: Session, facts: FoldFacts | None = None) -> dict[tuple[str, str], int]:
    """Events in the log by (source, auth): the fold's running counts (event_counts) plus the unfolded events
    (up to CAP of them). Monotonic: an event leaves the tail only when the fold has counted it."""
    facts = facts or fold_facts(session)
    counts = {
        (source, auth): count
        for source, auth, count in session.execute(select(EventCount.source, EventCount.auth, EventCount.count))
    }
    for key, count in facts.tail.items():
        counts[key] = counts.get(key, 0) + count
    return counts


def donations_by_open_status(session: Session) -> dict[str, int]:
    """PENDING and REVIEW donations (the status index; each row of those statuses is read)."""
    counts = dict.fromkeys(OPEN_STATUSES, 0)
    query = select(Donation.status, func.count()).where(Donation.status.in_(OPEN_STATUSES)).group_by(Donation.status)
    counts.update(session.execute(query).all())
    return counts


def stuck_pending_counts(session: Session, now: datetime, poll: PollConfig) -> tuple[int, int]:
    """PENDING donations (created more than poll.threshold_minutes ago, past poll.max_age_hours) in one pass
    over the PENDING rows (the status index). Past max age is the poller's expiry boundary (past_max_age)."""
    stuck = Donation.created_at < now - timedelta(minutes=poll.threshold_minutes)
    sums = [func.sum(case((when, 1), else_=0)) for when in (stuck, past_max_age(Donation.created_at, now, poll))]
    stuck_count, old_count = session.execute(select(*sums).where(Donation.status == PENDING)).one()
    return int(stuck_count or 0), int(old_count or 0)


def unacknowledged_anomalies(session: Session) -> dict[str, int]:
    """Anomalies nobody has settled yet, by kind (each part counted over at most ANOMALY_CAP rows):
    - on a donation still PENDING or REVIEW (the poller, an operator or a later trusted event settles it);
    - of an event still waiting for a donation (waiting_keys: unmatched and younger than fold.waiting_days).
    """
    open_donations = select(Donation.id).where(Donation.status.in_(OPEN_STATUSES)).limit(ANOMALY_CAP).subquery()
    on_open = (
        select(Anomaly.kind)
        .join(open_donations, open_donations.c.id == Anomaly.donation_id)
        .where(Anomaly.kind.not_in(WAITING_KINDS))
        .limit(ANOMALY_CAP)
        .subquery()
    )
    # walks the (kind, event_id) index from the oldest waiting event; each row is checked against waiting_keys
    first_waiting = select(func.min(WaitingKey.event_id)).scalar_subquery()
    # a scalar lookup, not EXISTS: MariaDB turns EXISTS into a semi-join that reads every waiting key
    still_waiting = select(WaitingKey.id).where(WaitingKey.event_id == Anomaly.event_id).limit(1).scalar_subquery()
    of_waiting = (
        select(Anomaly.kind)
        .where(Anomaly.kind.in_(WAITING_KINDS), Anomaly.event_id >= first_waiting, still_waiting.is_not(None))
        .limit(ANOMALY_CAP)
        .subquery()
    )
    counts: dict[str, int] = {}
    for part in (on_open, of_waiting):
        for kind, count in session.execute(select(part.c.kind, func.count()).group_by(part.c.kind)):
            counts[kind] = counts.get(kind, 0) + count
    return counts


@dataclass
class JobFacts:
    last_success: datetime | None = None
    last_finished: datetime | None = None
    last_duration: float | None = None
    last_outcome: str | None = None
    last_error: str | None = None


def job_names(session: Session) -> list[str]:
    """The distinct jobs in job_runs, one index seek each (a skip scan), not a scan of the table."""
    names: list[str] = []
    while (
        name := session.scalar(select(func.min(JobRun.job)).where(JobRun.job > (names[-1] if names else "")))
    ) is not None:
        names.append(name)
    return names


def job_facts(session: Session) -> dict[str, JobFacts]:
    """Per job, its latest finished run and its latest successful one, walking job_runs' job index back from
    the newest run (the cost is the runs since the last success)."""
    facts: dict[str, JobFacts] = {}
    columns = select(JobRun.started_at, JobRun.finished_at, JobRun.outcome, JobRun.error)
    for job in job_names(session):
        newest = columns.where(JobRun.job == job).order_by(JobRun.id.desc()).limit(1)
        fact = facts[job] = JobFacts()
        finished = session.execute(newest.where(JobRun.finished_at.is_not(None))).one_or_none()
        if finished is not None:
            started, fact.last_finished, fact.last_outcome, fact.last_error = finished
            fact.last_duration = (fact.last_finished - started).total_seconds()
        ok = session.execute(newest.where(JobRun.outcome == RunOutcome.OK)).one_or_none()
        if ok is not None:
            fact.last_success = ok.finished_at
    return facts


def fold_last_success(fold: FoldFacts, jobs: dict[str, JobFacts]) -> datetime | None:
    """The scheduler records only folds that moved events; every successful batch saves the checkpoint."""
    recorded = jobs["fold"].last_success if "fold" in jobs else None
    return max((t for t in (utc_from_db(fold.last_success), recorded) if t is not None), default=None)


def invariant_failing(fold: FoldFacts, jobs: dict[str, JobFacts]) -> bool:
    """The latest recorded fold failed on an invariant, and no batch has committed since."""
    fact = jobs.get("fold")
    if fact is None or fact.last_outcome != RunOutcome.ERROR or not is_violation_error(fact.last_error):
        return False
    last_success = utc_from_db(fold.last_success)
    return last_success is None or last_success < fact.last_finished


def spool_files(spool_dir: str | Path) -> int:
    """Non-empty files in the receiver's spool: callbacks written during an outage, not yet replayed by the
    spool job (a receiver's file stays, maybe empty, until the job claims it)."""
    count = 0
    try:
        with os.scandir(spool_dir) as entries:
            for entry in entries:
                if entry.name.endswith((SUFFIX, CLAIMED_SUFFIX)):
                    try:
                        count += entry.stat().st_size > 0
                    except FileNotFoundError:  # claimed or ingested meanwhile
                        pass
    except FileNotFoundError:
        return 0
    return count
