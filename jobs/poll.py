"""The poller: ask AzamPay about donations still unconfirmed after a threshold, and append the answers.

It never writes donation state. Every answer becomes a `poll` event and the fold does the rest; what one
answer appends is pipeline.status_check.rows_for, the rule the single-donation check uses too. Appends are grouped (one executemany transaction per group of answers), so
10,000 stuck donations cost a handful of queries, not 10,000 transactions.

Which donations are due (one selection query, one grouped query over earlier poll events):
- PENDING and created before now - poll.threshold_minutes (the webhook guide's "stuck pending"), or
  PENDING with needs_check (an untrusted callback or an unknown status asked for a check) at any age;
- not in backoff: after n earlier answered polls (count and time taken from the log itself), the next
  check is due at last_poll + base * 2^(n-1), capped (10 m, 20 m, 40 m, ... 4 h with the defaults).
  A needs_check donation whose latest folded event is newer than its latest poll is due at once: the
  poll is the answer to that new doubt;
- with a transactionId: without one there is nothing to ask (counted as no_transaction_id);
- a donation older than poll.max_age_hours is always due for a last check. When that check is not
  definite (PENDING or UNKNOWN), an expiry `poll` event (status EXPIRED) is appended after the answer and
  the fold makes the donation EXPIRED. A donation without a transactionId is expired without asking.
  A later trusted success still wins over EXPIRED (late_success).

A network error (AzamPayUnavailable, ...) appends nothing: it is counted (report.errors and the first
messages in report.error_messages) and the donation is simply due again on the next run. An
authentication failure stops the run early: every further call would fail the same way.

Two pollers on one database never ask about the same donations: a run holds the `poll` row of job_locks
as a lease (atomic conditional UPDATE, renewed while the run lasts, released at the end). A second run
meanwhile raises LockBusy. `donation_id=` (one donation, now) is pipeline.status_check.check_donation,
which takes no lease: a single extra question is harmless, and the status endpoint must not wait for a run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import datetime, timedelta
from typing import Any

from loguru import logger
from sqlalchemy import func, or_, select, true
from sqlalchemy.engine import Engine

from jobs import locks
from pipeline.azampay import AzamPayClient, StatusAnswer
from pipeline.config import Config
from pipeline.db import transaction
from pipeline.errors import AzamPayError
from pipeline.fold import Source, Status
from pipeline.logs import payments
from pipeline.models import Donation, PaymentEvent
from pipeline.status_check import (
    Candidate,
    PollReport,
    check_donation,
    past_max_age,
    refuse_during_rebuild,
    rows_for,
    skip_unaskable,
)
from pipeline.store.events import append_events

LOCK_NAME = "poll"
DEFAULT_LEASE_SECONDS = 300.0  # a crashed poller's lease is taken over after this long
RENEW_EVERY_SECONDS = 30.0  # a live poller renews its lease this often
GROUP_ROWS = 500  # answers appended per transaction
GROUP_SECONDS = 1.0  # ... or at least this often


def backoff_delay(config: Config, earlier_polls: int) -> timedelta:
    """How long after the last poll the next one is due: base * 2^(n-1), capped; n = earlier answered polls."""
    poll = config.poll
    if earlier_polls <= 0:
        return timedelta(0)
    minutes = min(poll.backoff_base_minutes * 2 ** min(earlier_polls - 1, 40), poll.backoff_cap_minutes)
    return timedelta(minutes=minutes)


# --- selection ----------------------------------------------------------------------------------------------


def _due_candidates(
    engine: Engine, config: Config, now: datetime, report: PollReport, limit: int | None
) -> list[Candidate]:
    """PENDING donations past the threshold or needing a check, minus those in backoff; oldest first."""
    poll = config.poll
    threshold = now - timedelta(minutes=poll.threshold_minutes)
    selection = (
        Donation.status == Status.PENDING,
        or_(Donation.created_at < threshold, Donation.needs_check == true()),
    )
    with transaction(engine) as session:
        rows = session.execute(
            select(
                Donation.id,
                Donation.transaction_id,
                Donation.provider,
                Donation.created_at,
                Donation.needs_check,
                Donation.last_event_id,
            )
            .where(*selection)
            .order_by(Donation.created_at, Donation.id)
        ).all()
        history = {
            donation_id: (count, last_at, last_id)
            for donation_id, count, last_at, last_id in session.execute(
                select(
                    PaymentEvent.donation_id,
                    func.count(),
                    func.max(PaymentEvent.received_at),
                    func.max(PaymentEvent.id),
                )
                .join(Donation, Donation.id == PaymentEvent.donation_id)
                .where(PaymentEvent.source == Source.POLL, *selection)
                .group_by(PaymentEvent.donation_id)
            )
        }
    report.candidates = len(rows)
    due: list[Candidate] = []
    for donation_id, transaction_id, provider, created_at, needs_check, last_event_id in rows:
        expire = past_max_age(created_at, now, poll)
        count, last_at, last_poll_id = history.get(donation_id, (0, None, None))
        if not expire and count:
            fresh_doubt = bool(needs_check) and last_event_id is not None and last_event_id > last_poll_id
            if not fresh_doubt and now < last_at + backoff_delay(config, count):
                report.skipped_backoff += 1
                continue
        candidate = Candidate(donation_id, transaction_id, provider, created_at, Status.PENDING, expire)
        if skip_unaskable(report, candidate):
            continue
        due.append(candidate)
        if limit is not None and len(due) >= limit:
            break
    return due


# --- the run ------------------------------------------------------------------------------------------------


class _Appender:
    """Buffers event rows and appends them in groups, one transaction per group."""

    def __init__(self, engine: Engine, report: PollReport):
        self.engine, self.report = engine, report
        self.rows: list[dict[str, Any]] = []
        self.flushed_at = time.monotonic()

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        if len(self.rows) >= GROUP_ROWS:
            self.flush()

    def maybe_flush(self) -> None:
        if self.rows and time.monotonic() - self.flushed_at >= GROUP_SECONDS:
            self.flush()

    def flush(self) -> None:
        rows, self.rows = self.rows, []
        self.flushed_at = time.monotonic()
        if rows:
            with transaction(self.engine, immediate=True) as session:
                append_events(session, rows)
            self.report.appended += len(rows)


def run_poll(
    engine: Engine,
    config: Config,
    client: AzamPayClient,
    now: datetime,
    *,
    donation_id: int | None = None,
    limit: int | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
) -> PollReport:
    """Ask AzamPay about every due donation (or exactly `donation_id`, now) and append the answers.

    Raises LockBusy when another poller holds the lease, NotFound for an unknown `donation_id`.
    `now` is the run's clock origin: events are stamped now + elapsed time.
    """
    if donation_id is not None:
        return check_donation(engine, config, client, donation_id, now)
    started = time.monotonic()

    def clock() -> datetime:
        return now + timedelta(seconds=time.monotonic() - started)

    report = PollReport()
    refuse_during_rebuild(engine)
    holder = locks.holder_name()
    locks.acquire(engine, LOCK_NAME, holder, now, lease_seconds)
    try:
        candidates = _due_candidates(engine, config, now, report, limit)
        _ask_all(
            engine,
            config,
            client,
            candidates,
            report,
            clock,
            renew=lambda: locks.renew(engine, LOCK_NAME, holder, clock()),
        )
    finally:
        try:
            locks.release(engine, LOCK_NAME, holder)
        except Exception as exc:  # the lease expires by itself; do not hide the run's own error
            logger.warning("poll: could not release the lease ({}); it expires after {:.0f}s", exc, lease_seconds)
    report.seconds = time.monotonic() - started
    if report.checked or report.expired or report.errors:
        payments.info(f"Poll: {report.summary()} in {report.seconds:.1f}s")
    if report.errors:
        logger.warning(
            "poll: {} status call(s) failed; they are retried next run. First: {}",
            report.errors,
            report.error_messages[:1],
        )
    return report


def _ask_all(engine, config, client, candidates: list[Candidate], report: PollReport, clock, renew) -> None:
    appender = _Appender(engine, report)
    concurrency = max(1, config.poll.concurrency)
    stop = threading.Event()

    def ask(candidate: Candidate) -> tuple[Candidate, StatusAnswer | None, AzamPayError | None, datetime]:
        if stop.is_set() or not candidate.transaction_id:
            return candidate, None, None, clock()
        try:
            answer = client.transaction_status(candidate.transaction_id, candidate.provider or "")
            return candidate, answer, None, clock()
        except AzamPayError as exc:
            return candidate, None, exc, clock()

    def handle(candidate: Candidate, answer: StatusAnswer | None, error: AzamPayError | None, at: datetime) -> None:
        appender.add(rows_for(report, candidate, answer, error, config, at))
        if report.aborted is not None:  # authentication refused: every further call would fail the same way
            stop.set()

    renewed_at = time.monotonic()
    work: Iterator[Candidate] = iter(candidates)
    in_flight: set[Future] = set()
    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="poll") as executor:

            def fill() -> None:
                while len(in_flight) < concurrency * 2 and not stop.is_set():
                    candidate = next(work, None)
                    if candidate is None:
                        return
                    in_flight.add(executor.submit(ask, candidate))

            fill()
            while in_flight:
                done, still = wait(in_flight, timeout=GROUP_SECONDS, return_when=FIRST_COMPLETED)
                in_flight.clear()
                in_flight.update(still)
                for future in done:
                    handle(*future.result())
                fill()
                appender.maybe_flush()
                if renew is not None and time.monotonic() - renewed_at >= RENEW_EVERY_SECONDS:
                    renewed_at = time.monotonic()
                    if not renew():
                        logger.warning("poll: the lease was taken over by another poller; stopping early")
                        report.aborted = "lease lost"
                        stop.set()
    finally:
        stop.set()
        appender.flush()  # answers already received are recorded even when the run fails
