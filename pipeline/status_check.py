"""Asking AzamPay about one donation: the rule for what an answer appends, and the single-donation check.

Every answer becomes a `poll` event (raw answer bytes, status mapped to SUCCESS | FAILED | PENDING | UNKNOWN,
status_raw = AzamPay's `data` text, donation_id, transaction_ref); nothing here writes donation state, the
fold does the rest. A donation past poll.max_age_hours whose answer is not definite (PENDING, UNKNOWN, or no
transactionId to ask about) also gets an expiry `poll` event (status EXPIRED). A network error appends
nothing and is counted; an authentication failure marks the report aborted.

The boundary of "past poll.max_age_hours" is `past_max_age` (the poller, this check and /metrics use it), and
a donation with nothing to ask and nothing to expire is skipped by `skip_unaskable`.

`rows_for` is that rule, used for every donation of a poll run (jobs/poll.py) and by `check_donation`, which
asks about exactly one donation now (the portal's status endpoint and `azamrecon poll --donation`). A single
check takes no lease: one extra question is harmless, and the status endpoint must not wait for a
scheduled run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from pipeline.azampay import AzamPayClient, StatusAnswer
from pipeline.config import Config
from pipeline.db import transaction
from pipeline.errors import AzamPayAuthError, AzamPayError, LockBusy, NotFound
from pipeline.events import EventFields
from pipeline.fold import NOT_APPLICABLE, Source, Status
from pipeline.models import Donation
from pipeline.sections import PollConfig
from pipeline.store.events import append_events, event_row

MAX_ERROR_MESSAGES = 5
DEFINITE = (Status.SUCCESS, Status.FAILED)  # answers that settle a donation: no expiry after them


@dataclass
class PollReport:
    """Counts of one run. `checked` = answers appended; success/failed/pending/unknown split them."""

    candidates: int = 0  # PENDING donations past the threshold or needing a check
    checked: int = 0
    success: int = 0
    failed: int = 0
    pending: int = 0
    unknown: int = 0
    expired: int = 0
    errors: int = 0
    skipped_backoff: int = 0
    no_transaction_id: int = 0
    appended: int = 0  # events written (answers + expiries)
    aborted: str | None = None  # why the run stopped early (authentication refused)
    error_messages: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, error_messages=list(self.error_messages))

    def counts(self) -> dict[str, int]:
        """Every count of the run (COUNT_KEYS), in order."""
        return {key: getattr(self, key) for key in COUNT_KEYS}

    def summary(self) -> str:
        return ", ".join(f"{key}={getattr(self, key)}" for key in SUMMARY_KEYS)


# the counts a run's log line gives, and every count of a run (`azamrecon poll` prints these)
SUMMARY_KEYS = (
    "checked",
    "success",
    "failed",
    "pending",
    "unknown",
    "expired",
    "errors",
    "skipped_backoff",
    "no_transaction_id",
)
COUNT_KEYS = ("candidates", *SUMMARY_KEYS, "appended")


@dataclass(frozen=True, slots=True)
class Candidate:
    id: int
    transaction_id: str | None
    provider: str | None
    created_at: datetime
    status: str
    expire: bool  # PENDING and past_max_age: expire unless the answer is definite


def expiry_cutoff(now: datetime, poll: PollConfig) -> datetime:
    """A PENDING donation created at or before this instant is past poll.max_age_hours."""
    return now - timedelta(hours=poll.max_age_hours)


def past_max_age(created_at: Any, now: datetime, poll: PollConfig) -> Any:
    """created_at <= expiry_cutoff: a bool for a datetime, a SQL condition for a column (Donation.created_at)."""
    return created_at <= expiry_cutoff(now, poll)


def skip_unaskable(report: PollReport, candidate: Candidate) -> bool:
    """True, counted as no_transaction_id, when there is nothing to do: no transactionId to ask about and the
    donation is not due to expire."""
    if candidate.transaction_id or candidate.expire:
        return False
    report.no_transaction_id += 1
    return True


# --- events -------------------------------------------------------------------------------------------------


def answer_row(candidate: Candidate, answer: StatusAnswer, received_at: datetime) -> dict[str, Any]:
    fields = EventFields(
        status=answer.status,
        status_raw=(answer.text or None) and answer.text[:255],
        transaction_ref=candidate.transaction_id and candidate.transaction_id[:255],
        operator=candidate.provider and candidate.provider[:64],
    )
    return event_row(
        source=Source.POLL,
        body=answer.raw,
        received_at=received_at,
        auth=NOT_APPLICABLE,
        fields=fields,
        content_type="application/json",
        donation_id=candidate.id,
    )


def expiry_row(candidate: Candidate, config: Config, received_at: datetime, last_status: str | None) -> dict[str, Any]:
    hours = config.poll.max_age_hours
    reason = f"no definite answer {hours:g} h after checkout" + (
        f" (last answer {last_status})" if last_status else " (no transactionId to ask about)"
    )
    body = json.dumps(
        {
            "expired": True,
            "donation_id": candidate.id,
            "transactionId": candidate.transaction_id,
            "created_at": candidate.created_at.isoformat(),
            "max_age_hours": hours,
            "reason": reason,
        },
        sort_keys=True,
    ).encode()
    fields = EventFields(
        status=Status.EXPIRED,
        status_raw=reason[:255],
        transaction_ref=candidate.transaction_id and candidate.transaction_id[:255],
    )
    return event_row(
        source=Source.POLL,
        body=body,
        received_at=received_at,
        auth=NOT_APPLICABLE,
        fields=fields,
        content_type="application/json",
        donation_id=candidate.id,
    )


def rows_for(
    report: PollReport,
    candidate: Candidate,
    answer: StatusAnswer | None,
    error: AzamPayError | None,
    config: Config,
    at: datetime,
) -> list[dict[str, Any]]:
    """The rows one status call appends (its answer, then an expiry when due), counted in `report`.

    `answer` and `error` both None means the donation was not asked: it has no transactionId (then only an
    expiry can be due), or the run stopped first (then nothing). An error appends nothing; an authentication
    error sets `report.aborted`, since every further call would fail the same way."""
    if error is not None:
        report.errors += 1
        if len(report.error_messages) < MAX_ERROR_MESSAGES:
            report.error_messages.append(str(error)[:300])
        if isinstance(error, AzamPayAuthError) and report.aborted is None:
            report.aborted = str(error)[:300]
        return []
    rows: list[dict[str, Any]] = []
    last_status = None
    if answer is not None:
        rows.append(answer_row(candidate, answer, at))
        report.checked += 1
        last_status = answer.status
        setattr(report, answer.status.lower(), getattr(report, answer.status.lower()) + 1)
    elif candidate.transaction_id:
        return rows  # skipped after an abort
    # portal mode: a donation is never expired without an answer (with no AzamPay id learned at checkout there
    # is nothing to ask, and its payment may still be confirmed by a callback or an operator: docs/portal.md)
    if candidate.expire and last_status not in DEFINITE and (answer is not None or not config.portal.enabled):
        rows.append(expiry_row(candidate, config, at, last_status))
        report.expired += 1
    return rows


# --- one donation -------------------------------------------------------------------------------------------


def refuse_during_rebuild(engine: Engine) -> None:
    """While a rebuild refolds the log, statuses read PENDING until their events are folded again:
    polling them would ask AzamPay about paid donations and append expiry events for old ones."""
    from pipeline.store.checkpoint import CHECKPOINT
    from pipeline.store.state import SqlFoldStore

    with transaction(engine) as session:
        rebuilding = SqlFoldStore(session).read_checkpoint(CHECKPOINT).rebuild_until is not None
    if rebuilding:
        raise LockBusy("poll: a rebuild is in progress; polling resumes when it has refolded the log")


def load_candidate(engine: Engine, config: Config, donation_id: int, now: datetime) -> Candidate:
    """Donation `donation_id` as a candidate, whatever its status; NotFound when there is none."""
    with transaction(engine) as session:
        row = session.execute(
            select(Donation.id, Donation.transaction_id, Donation.provider, Donation.created_at, Donation.status).where(
                Donation.id == donation_id
            )
        ).one_or_none()
    if row is None:
        raise NotFound(f"donation {donation_id} not found")
    expire = row.status == Status.PENDING and past_max_age(row.created_at, now, config.poll)
    return Candidate(row.id, row.transaction_id, row.provider, row.created_at, row.status, expire)


def check_donation(
    engine: Engine, config: Config, client: AzamPayClient, donation_id: int, now: datetime
) -> PollReport:
    """Ask AzamPay about donation `donation_id` now (no threshold, no backoff) and append the answer.

    Raises LockBusy during a rebuild, NotFound for an unknown donation. Events are stamped now + elapsed."""
    started = time.monotonic()
    report = PollReport()
    refuse_during_rebuild(engine)
    candidate = load_candidate(engine, config, donation_id, now)
    report.candidates = 1
    if skip_unaskable(report, candidate):
        return report
    answer: StatusAnswer | None = None
    error: AzamPayError | None = None
    if candidate.transaction_id:
        try:
            answer = client.transaction_status(candidate.transaction_id, candidate.provider or "")
        except AzamPayError as exc:
            error = exc
    at = now + timedelta(seconds=time.monotonic() - started)
    rows = rows_for(report, candidate, answer, error, config, at)
    if rows:
        with transaction(engine, immediate=True) as session:
            append_events(session, rows)
        report.appended += len(rows)
    report.seconds = time.monotonic() - started
    return report
