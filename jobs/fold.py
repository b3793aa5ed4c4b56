"""The incremental fold job: new log events -> donation status, funding credits, patient totals, anomalies.

The rules are pipeline's: pipeline.fold_batch.fold_batch decides a batch (resolution, replay, anomalies,
credits, patient totals) and pipeline/fold.py each donation (docs/fold.md says where each rule lives).
This module owns what is around them: the transaction and its lock, the checkpoint, the gaps, the retry
of a batch and the choice of waiting events to retry, and the guide's log lines. A failure is raised,
not logged: the entry point (the scheduler, `azamrecon fold`) tells it, once (pipeline.throttle).

Each batch is one transaction that holds the fold lock (BEGIN IMMEDIATE on SQLite, SELECT ... FOR UPDATE
on the checkpoint row on MySQL), reads the next events without their bodies, applies the pure fold,
writes every effect with executemany, checks the invariants for what it touched, and moves the
checkpoint, all in that same transaction: a crash anywhere leaves either the whole batch or none of it.

Never skipping an event (docs/fold.md, "Never skipping an event"): on MySQL, auto-increment ids can
commit out of order. A missing id below the newest one read is recorded as a gap in the checkpoint and
looked up again on every batch until it appears or is older than fold.gap_timeout_seconds. An event that
appears late is older than events already applied to its donation, so that donation is replayed from
scratch in id order, which makes the incremental state identical to a rebuild.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from loguru import logger
from sqlalchemy.engine import Engine

from jobs.portal_sync import sync_portal
from jobs.portal_write import apply_portal
from pipeline.config import Config
from pipeline.db import transaction
from pipeline.errors import StoreConflict
from pipeline.fold import COMPLETED, FAILED, DonationState, FoldEvent, Source, Transition, TrustPolicy, credit_of
from pipeline.fold_batch import BatchResult, fold_batch, reference_format, trust_policy
from pipeline.invariants import violation_error
from pipeline.logs import payments
from pipeline.portal_record import SyncReport
from pipeline.portal_write import write_portal
from pipeline.resolution import ReferenceFormat
from pipeline.store.checkpoint import CHECKPOINT, Checkpoint
from pipeline.store.metrics import fold_facts
from pipeline.store.state import SqlFoldStore
from pipeline.store.waiting import offered_keys

MAX_GAP_SPAN = 10_000  # a jump wider than this is not an in-flight transaction; it is not waited for
CONFLICT_ATTEMPTS = (
    3  # a batch ended by a MySQL lock conflict (StoreConflict) is run again, up to this many times in all
)


@contextmanager
def collector_paused() -> Iterator[None]:
    """A fold batch allocates millions of short-lived tuples that form no cycles. Reference counting frees
    them; the cyclic collector would only rescan them (bench/RESULTS.md has the cost). Cycles made during
    the batch are collected after it. Wrap the call that returns from the batch, not the work inside it:
    the first collection after gc.enable() (at the next allocations) traverses whatever is still alive,
    and inside the batch that is all of its objects; after the return, only what the batch hands back."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def next_events(
    store: SqlFoldStore,
    checkpoint: Checkpoint,
    batch_size: int,
    now: datetime,
    gap_timeout: float,
    max_gaps: int = 10_000,
) -> tuple[list[FoldEvent], list[FoldEvent]]:
    """(new events after the checkpoint, events that filled earlier gaps); updates checkpoint position and gaps.

    Missing ids are expected every `auto_increment_increment` (read, not assumed: Galera and
    master-master setups use 2 or more). At most `max_gaps` are awaited; past it the oldest are given
    up, so ids anyone can make skip (INSERT IGNORE of duplicates) never stop the fold."""
    filled = store.events_by_ids(checkpoint.gap_ids()) if checkpoint.gaps else []
    filled_ids = {event.id for event in filled}
    expiry = now - timedelta(seconds=gap_timeout)
    gaps = [(gap_id, seen) for gap_id, seen in checkpoint.gaps if gap_id not in filled_ids and seen >= expiry]
    dropped = len(checkpoint.gaps) - len(filled_ids) - len(gaps)
    if dropped:
        logger.warning(f"fold: gave up waiting for {dropped} missing event id(s) after {gap_timeout:.0f}s")
    fresh = store.events_after(checkpoint.position, batch_size)
    step = store.id_step() if fresh else 1
    # with a step of k, each writer's ids share one remainder mod k (its auto_increment_offset): await the
    # ids of every remainder seen in this batch, so a second writer's in-flight id is awaited as well
    residues = {event.id % step for event in fresh} | ({checkpoint.position % step} if checkpoint.position else set())
    expected = checkpoint.position + 1
    for event in fresh:
        if event.id > expected and event.id - expected <= MAX_GAP_SPAN:
            gaps.extend((gap_id, now) for gap_id in range(expected, event.id) if step == 1 or gap_id % step in residues)
        elif event.id - expected > MAX_GAP_SPAN:
            logger.warning(f"fold: event ids jump from {expected - 1} to {event.id}; ids in between are not waited for")
        expected = event.id + 1
    if len(gaps) > max_gaps:
        gaps.sort()
        logger.warning(
            f"fold: {len(gaps)} missing event ids awaited, more than fold.max_gaps={max_gaps}; the {len(gaps) - max_gaps} oldest are given up"
        )
        gaps = gaps[len(gaps) - max_gaps :]
    if fresh:
        checkpoint.position = fresh[-1].id
    checkpoint.gaps = gaps
    return fresh, filled


def _waiting_to_retry(store: SqlFoldStore, checkpoint: Checkpoint, events: list[FoldEvent]) -> tuple[list[int], int]:
    """(waiting events to retry, new donation_high). Waiting events are offered the donations created since
    checkpoint.donation_high and the transaction ids that the batch's checkout answers recorded, through
    waiting_keys' index.

    A checkout sets its donation's transaction_id in the transaction that appends the checkout event, so
    only an event folded before that commit can be waiting for it. A rebuild reset after every checkout up
    to rebuild_until had committed, so those checkouts are not offered (every batch of a rebuild has them)."""
    donation_high = checkpoint.donation_high
    high = max(donation_high, store.max_donation_id())
    # a checkout's answer, and a portal row first seen or changed (whose id need not be above the high
    # mark: the portal's ids are not azamrecon's sequence), offer their donation's keys
    checkout_ids = {
        e.donation_id
        for e in events
        if e.source in (Source.CHECKOUT, Source.PORTAL, Source.ADOPT)
        and e.donation_id is not None
        and (checkpoint.rebuild_until is None or e.id > checkpoint.rebuild_until)
    }
    if high == donation_high and not checkout_ids:
        return [], high
    high, references, ids, transactions = store.donation_keys_above(donation_high)
    if checkout_ids:
        ids |= checkout_ids
        more_references, more_transactions = store.keys_of(checkout_ids)
        references |= more_references
        transactions |= more_transactions
    offered = offered_keys(ids, references, transactions)
    return (store.waiting_matching(offered) if offered else []), high


@dataclass
class FoldReport:
    batches: int = 0
    events: int = 0
    transitions: int = 0
    credits_added: int = 0
    credits_removed: int = 0
    anomalies: int = 0
    gaps_waiting: int = 0
    lag_events: int = 0
    position: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def run_fold(
    engine: Engine,
    config: Config,
    now: datetime,
    *,
    max_batches: int | None = None,
    batch_size: int | None = None,
    announce: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> FoldReport:
    """Fold until the log is exhausted (or max_batches). Each batch commits with its checkpoint.

    Every status change a batch makes is announced once in payments.log, after the batch commits, except
    those caused by events up to checkpoint.rebuild_until while a rebuild refolds them (they were announced
    when first folded), whoever runs the batch. announce=False silences a run (tests, benchmarks).
    progress(position, max_id) is called after each batch.
    """
    policy = trust_policy(config)
    batch_size = batch_size or config.fold.batch_size
    report = FoldReport()
    if config.portal.enabled:  # the portal's new and changed rows first, as facts in the log (docs/portal.md)
        announce_portal(sync_portal(engine, config, now))
    finished_rebuild = False
    references = reference_format(config)
    while max_batches is None or report.batches < max_batches:
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                with collector_paused():
                    result, checkpoint, fresh, retried, quiet_until, max_id = _fold_one_batch(
                        engine, config, policy, batch_size, now, references, progress
                    )
                break
            except StoreConflict as exc:
                if attempt == CONFLICT_ATTEMPTS:
                    raise  # the entry point (scheduler, CLI) tells the failure, once
                # the whole batch was rolled back with its checkpoint: running it again applies it once
                logger.warning(
                    f"fold: batch rolled back by a lock conflict, trying again ({attempt}/{CONFLICT_ATTEMPTS - 1}): {exc}"
                )
                time.sleep(0.05 * attempt)
        report.batches += 1
        # this batch ended a rebuild's refold: its results reach the portal now (apply_portal, below)
        finished_rebuild = finished_rebuild or (quiet_until is not None and checkpoint.rebuild_until is None)
        report.events += result.events
        report.transitions += len(result.transitions)
        report.credits_added += result.credits_added
        report.credits_removed += result.credits_removed
        report.anomalies += result.anomalies
        report.gaps_waiting = len(checkpoint.gaps)
        report.position = checkpoint.position
        if announce:
            announce_transitions(result, quiet_until)
        if progress:
            progress(checkpoint.position, max_id)
        if not fresh and not retried:
            break
    if finished_rebuild and config.portal.enabled:
        # the new state was computed aside while nothing was written to the portal: only its differences go,
        # in short batches, whoever finished the refold (a rebuild, or the fold after a rebuild that died)
        apply_portal(engine, config, now)
    with transaction(engine) as session:
        report.lag_events = fold_facts(session).lag_events
    return report


def _fold_one_batch(
    engine: Engine,
    config: Config,
    policy: TrustPolicy,
    batch_size: int,
    now: datetime,
    references: ReferenceFormat,
    progress,
):
    """One batch in one transaction, under the fold lock: (result, checkpoint, fresh, retried, quiet_until, max_id),
    where quiet_until is the rebuild's refold position at the batch's start (None when no rebuild runs)."""
    with transaction(engine, immediate=True) as session:
        store = SqlFoldStore(session)
        checkpoint = store.lock_checkpoint(CHECKPOINT)
        fresh, filled = next_events(
            store, checkpoint, batch_size, now, config.fold.gap_timeout_seconds, config.fold.max_gaps
        )
        if fresh:  # by the log's own clock, so a replayed log retires what it retired live; never past `now`
            # (an imported line dated 2099 must not retire everything that waits)
            store.retire_waiting(min(fresh[-1].received_at, now) - timedelta(days=config.fold.waiting_days))
        retry_ids, checkpoint.donation_high = _waiting_to_retry(store, checkpoint, fresh + filled)
        fresh_ids = {e.id for e in fresh + filled}
        retried = store.events_by_ids([i for i in retry_ids if i not in fresh_ids]) if retry_ids else []
        result = fold_batch(store, fresh + filled, retried, policy, references)
        problems = store.invariant_violations(patient_ids=result.patients.keys(), donation_ids=result.donations)
        if problems:
            raise violation_error(problems)
        # the results into the portal's rows, with the batch (docs/portal.md); not while a rebuild refolds
        # the log, whose intermediate states the portal must never show: it applies the differences after
        if config.portal.enabled and checkpoint.rebuild_until is None:
            write_portal(session, config, result.donations, result.patients.keys(), now)
        store.count_events(fresh + filled)
        checkpoint.events_applied += len(fresh) + len(filled)
        quiet_until = checkpoint.rebuild_until
        if quiet_until is not None and checkpoint.position >= quiet_until:
            checkpoint.rebuild_until = None
        store.save_checkpoint(checkpoint, now)
        max_id = store.max_event_id() if progress else 0
    return result, checkpoint, fresh, retried, quiet_until, max_id


def announce_portal(sync: SyncReport) -> None:
    """Each portal donation's owner, when first seen (docs/portal.md, "Ownership"), and each change another
    writer made to one azamrecon owns."""
    for donation_id in sync.owned:
        logger.info(f"portal: donation {donation_id} first seen: azamrecon's (AzamPay checkout)")
    for donation_id in sync.theirs:
        logger.info(f"portal: donation {donation_id} first seen: the portal's (its status is read, never written)")
    for donation_id in sync.external:
        logger.warning(f"portal: donation {donation_id} status changed by another writer: external_write recorded")


def announce_transitions(result: BatchResult, quiet_until: int | None = None) -> None:
    """The webhook guide's log phrases, once per real status change, after the batch committed. A change
    caused by an event up to quiet_until (a rebuild refolding what was announced before) is not repeated.

    Each "Updated patient funding" line gives the total after that donation, as the guide's one-callback-
    at-a-time view did, not the batch's final total: a batch that completes two donations of one patient
    says 25000.00 and then 35000.00. The last completion's line equals the total the batch stored."""
    announced = [(t, state) for t, state in result.transitions if quiet_until is None or t.event_id > quiet_until]
    received = _funding_before_completions(result, announced)
    for transition, state in announced:
        if transition.source in (Source.PORTAL, Source.ADOPT):  # no callback: the portal's row said so
            payments.info(f"Portal row - donation {transition.donation_id} is {transition.event_status} in the portal")
        else:
            payments.info(
                f"Processed callback - External ID: {transition.reference}, Status: {transition.event_status}"
            )
        if transition.after == COMPLETED:
            payments.info(f"✅ Donation {transition.donation_id} completed successfully")
            patient_id = state.patient_id
            if patient_id in received:
                received[patient_id] += credit_of(state).amount
                payments.info(
                    f"Updated patient funding: {received[patient_id]:.2f}/{result.patient_required[patient_id]:.2f}"
                )
        elif transition.after == FAILED:
            payments.info(f"❌ Donation {transition.donation_id} payment failed")
        else:
            payments.info(f"Donation {transition.donation_id} is now {transition.after} (was {transition.before})")


def _funding_before_completions(
    result: BatchResult, announced: list[tuple[Transition, DonationState]]
) -> dict[int, Decimal]:
    """Each touched patient's funding_received less the credits of the completions announced in this batch
    (every other credit change of the batch, a removal say, counts as before them). A donation that
    became COMPLETED had no credit before (only COMPLETED donations have one), so its credit is the change."""
    received = {patient_id: totals.funding_received for patient_id, totals in result.patients.items()}
    for transition, state in announced:
        if transition.after == COMPLETED and state.patient_id in received:
            received[state.patient_id] -= credit_of(state).amount
    return received
