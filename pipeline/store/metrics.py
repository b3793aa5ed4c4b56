"""Read-only aggregates for /metrics and reports."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.fold import PENDING
from pipeline.models import Donation, EventCount, FoldCheckpoint, JobRun, PaymentEvent
from pipeline.store.checkpoint import CHECKPOINT, fold_lag


def events_by_source_and_auth(session: Session) -> dict[tuple[str, str], int]:
    """Events in the log by (source, auth): the fold's running counts plus the events after its position
    (a primary-key range, as short as the fold lag), not a count of the whole log, which grows without end."""
    counts = {
        (source, auth): count
        for source, auth, count in session.execute(select(EventCount.source, EventCount.auth, EventCount.count))
    }
    position = session.scalar(select(FoldCheckpoint.position).where(FoldCheckpoint.name == CHECKPOINT)) or 0
    query = (
        select(PaymentEvent.source, PaymentEvent.auth, func.count())
        .where(PaymentEvent.id > position)
        .group_by(PaymentEvent.source, PaymentEvent.auth)
    )
    for source, auth, count in session.execute(query):
        counts[(source, auth)] = counts.get((source, auth), 0) + count
    return counts


def donations_by_status(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Donation.status, func.count()).group_by(Donation.status)).all())


def stuck_pending(session: Session, now: datetime, threshold_minutes: float) -> int:
    cutoff = now - timedelta(minutes=threshold_minutes)
    return (
        session.scalar(
            select(func.count()).select_from(Donation).where(Donation.status == PENDING, Donation.created_at < cutoff)
        )
        or 0
    )


def job_stats(session: Session) -> dict[str, dict]:
    """Per job: runs by outcome, and the duration of the latest finished run."""
    stats: dict[str, dict] = {}
    for job, outcome, count in session.execute(
        select(JobRun.job, JobRun.outcome, func.count()).group_by(JobRun.job, JobRun.outcome)
    ):
        stats.setdefault(job, {"outcomes": {}, "last_duration": None})["outcomes"][outcome] = count
    latest = (
        select(JobRun.job, func.max(JobRun.id).label("id"))
        .where(JobRun.finished_at.is_not(None))
        .group_by(JobRun.job)
        .subquery()
    )
    for job, started, finished in session.execute(
        select(JobRun.job, JobRun.started_at, JobRun.finished_at).join(latest, latest.c.id == JobRun.id)
    ):
        stats.setdefault(job, {"outcomes": {}, "last_duration": None})["last_duration"] = (
            finished - started
        ).total_seconds()
    return stats


def lag(session: Session, now: datetime) -> tuple[int, float]:
    """(events not yet folded, seconds since the oldest of them was received)."""
    count, oldest = fold_lag(session)
    return count, (max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0)
