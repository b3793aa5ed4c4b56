"""The incremental fold: new log events -> donation status, funding credits, patient totals, anomalies.

Each batch is one transaction that holds the fold lock (BEGIN IMMEDIATE on SQLite, SELECT ... FOR
UPDATE on the checkpoint row on MySQL), reads the next events without their bodies, applies the pure
fold, writes every effect with executemany, checks the invariants for what it touched, and moves the
checkpoint, all in that same transaction: a crash anywhere leaves either the whole batch or none of it.

Never skipping an event (DESIGN §4, Hazard): on MySQL, auto-increment ids can commit out of order. A
missing id below the newest one read is recorded as a gap in the checkpoint and looked up again on
every batch until it appears or is older than fold.gap_timeout_seconds. An event that appears late is
older than events already applied to its donation, so that donation is replayed from scratch in id
order, which makes the incremental state identical to a rebuild.
"""

from __future__ import annotations

import gc
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

from loguru import logger
from sqlalchemy.engine import Engine

from pipeline.config import Config
from pipeline.db import transaction
from pipeline.errors import InvariantViolation, StoreConflict
from pipeline.fold import (
    COMPLETED,
    FAILED,
    AnomalyRecord,
    Credit,
    DonationState,
    FoldEvent,
    PatientTotals,
    Transition,
    TrustPolicy,
    credit_of,
    fold_donation,
    patient_totals,
    patient_update,
)
from pipeline.logs import payments
from pipeline.resolution import (
    CONFLICT_KIND,
    DEFAULT_FORMAT,
    TRANSACTION,
    DonationIndex,
    ReferenceFormat,
    Resolution,
    decide,
    lookup_keys,
    wanted_values,
)
from pipeline.store.state import CHECKPOINT, Checkpoint, SqlFoldStore, fold_lag, offered_keys

MAX_GAP_SPAN = 10_000  # a jump wider than this is not an in-flight transaction; it is not waited for
CONFLICT_ATTEMPTS = (
    3  # a batch ended by a MySQL lock conflict (StoreConflict) is run again, up to this many times in all
)


@contextmanager
def collector_paused() -> Iterator[None]:
    """A fold batch allocates millions of short-lived tuples that form no cycles. Reference counting frees
    them; the cyclic collector only rescanned them, a fifth of a rebuild's time. Cycles made during the
    batch are collected after it. Wrap the call that returns from the batch, not the work inside it: the
    first collection after gc.enable() (at the next allocations) traverses whatever is still alive, and
    inside the batch that is all of its objects (4% of a rebuild); after the return, only what the batch
    hands back."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def trust_policy(config: Config) -> TrustPolicy:
    return TrustPolicy(
        credential_configured=config.webhook.credential_configured, verify_only=config.webhook.mode == "verify"
    )


def reference_format(config: Config) -> ReferenceFormat:
    return ReferenceFormat(config.donations.reference_prefix)


class FoldStore(Protocol):
    """What fold_batch needs; SqlFoldStore and MemoryFoldStore provide it."""

    def donations_matching(self, wanted) -> dict[int, DonationState]: ...
    def events_by_ids(self, ids) -> list[FoldEvent]: ...
    def write_donations(self, states) -> None: ...
    def add_anomalies(self, anomalies) -> None: ...
    def drop_anomalies(self, donation_ids=(), waiting_events=()) -> None: ...
    def applied_events(self, donation_ids) -> dict[int, list[int]]: ...
    def add_applied(self, pairs) -> None: ...
    def set_waiting(self, dropped, added) -> None: ...
    def apply_credit_changes(self, changes) -> None: ...
    def patients(self, ids): ...
    def credits_of_patients(self, ids): ...
    def write_patients(self, totals) -> None: ...


@dataclass
class BatchResult:
    events: int = 0
    transitions: list[tuple[Transition, DonationState]] = field(default_factory=list)
    credits_added: int = 0
    credits_removed: int = 0
    anomalies: int = 0
    patients: dict[int, PatientTotals] = field(default_factory=dict)
    patient_required: dict[int, object] = field(default_factory=dict)
    donations: set[int] = field(default_factory=set)


def fold_batch(
    store: FoldStore,
    events: list[FoldEvent],
    retried: list[FoldEvent],
    policy: TrustPolicy,
    references: ReferenceFormat = DEFAULT_FORMAT,
) -> BatchResult:
    """Apply new events (and waiting events retried against new donations) through `store`."""
    result = BatchResult(events=len(events))
    everything = sorted(events + retried)  # by id: ids are unique, so tuples compare on their first field
    states, decisions, keys = _resolve_all(store, everything, references)

    anomalies: list[AnomalyRecord] = []
    by_donation: dict[int, list[FoldEvent]] = {}
    waiting: list[tuple[FoldEvent, tuple]] = []
    for event, decision, event_keys in zip(everything, decisions, keys, strict=True):
        if event.parse_error:
            anomalies.append(AnomalyRecord(event.id, None, "invalid_payload", event.parse_error[:500]))
            continue
        donation_id = decision.donation_id
        if donation_id is None:
            anomalies.append(_waiting_anomaly(event, decision))
            waiting.append((event, event_keys))
            continue
        if donation_id in by_donation:
            by_donation[donation_id].append(event)
        else:
            by_donation[donation_id] = [event]

    replayed = [
        donation_id
        for donation_id, donation_events in by_donation.items()
        if states[donation_id].last_event_id is not None and donation_events[0].id <= states[donation_id].last_event_id
    ]
    applied = store.applied_events(replayed) if replayed else {}
    to_fetch = {event_id for ids in applied.values() for event_id in ids}
    earlier = {event.id: event for event in store.events_by_ids(to_fetch)} if to_fetch else {}

    changes: list[tuple[Credit | None, Credit | None]] = []
    changed_states: list[DonationState] = []
    replay_set = set(replayed)
    for donation_id, donation_events in by_donation.items():
        state = states[donation_id]
        before_status, before_credit = state.status, credit_of(state)
        if donation_id in replay_set:
            merged = {event_id: earlier[event_id] for event_id in applied.get(donation_id, ()) if event_id in earlier}
            merged.update((event.id, event) for event in donation_events)
            donation_events = [merged[event_id] for event_id in sorted(merged)]
            state = states[donation_id] = state.reset()
        raised, transitions = fold_donation(state, donation_events, policy)
        anomalies.extend(raised)
        changed_states.append(state)
        after_credit = credit_of(state)
        if after_credit != before_credit:
            changes.append((before_credit, after_credit))
        if state.status != before_status and transitions:
            last = transitions[-1]
            result.transitions.append(
                (
                    Transition(
                        last.donation_id, last.event_id, before_status, last.after, last.reference, last.event_status
                    ),
                    state,
                )
            )
    result.donations = set(by_donation)

    # a retried event's anomaly is raised again from what it resolves to now, as a rebuild would raise it
    store.drop_anomalies(donation_ids=replayed, waiting_events=[event.id for event in retried])
    store.set_waiting([event.id for event in retried], waiting)
    # new, gap-filled and retried events were never applied before: each gets its row once
    store.add_applied(
        [(event.id, donation_id) for donation_id, donation_events in by_donation.items() for event in donation_events]
    )
    store.write_donations(changed_states)
    store.add_anomalies(anomalies)
    store.apply_credit_changes(changes)
    result.anomalies = len(anomalies)
    result.credits_added = sum(1 for old, new in changes if old is None)
    result.credits_removed = sum(1 for old, new in changes if new is None)
    _update_patients(store, changes, result)
    return result


def _waiting_anomaly(event: FoldEvent, decision: Resolution) -> AnomalyRecord:
    """The anomaly of an event that resolved to no donation; its event waits for one (WAITING_KINDS)."""
    if decision.conflict is not None:
        return AnomalyRecord(event.id, decision.candidate, CONFLICT_KIND, decision.conflict[:500])
    detail = event.utilityref or event.externalreference or event.transaction_ref or str(event.donation_id)
    return AnomalyRecord(event.id, None, "unknown_reference", f"no donation for {detail}"[:500])


def _resolve_all(
    store: FoldStore, events: list[FoldEvent], references: ReferenceFormat
) -> tuple[dict[int, DonationState], list[Resolution], list[tuple]]:
    """(the donation states the events name, each event's Resolution, each event's keys), as pipeline.resolution.decide over
    every donation decides. References and ids are looked up first; transaction ids only for the events
    that no reference or own donation_id resolved: most events carry one, and the transaction lookups were
    a third of the reads. A strong key that matches wins, so what the first look-up resolved stays."""
    keys = [lookup_keys(event, references) for event in events]
    first = wanted_values(key for event_keys in keys for key in event_keys if key.column != TRANSACTION)
    states = store.donations_matching(first)
    index = DonationIndex()
    for state in states.values():
        index.add(state)
    decisions = [decide(event, event_keys, index) for event, event_keys in zip(events, keys, strict=True)]
    again = [
        i
        for i, decision in enumerate(decisions)
        if not _strong(decision, keys[i], index) and any(key.column == TRANSACTION for key in keys[i])
    ]
    if again:
        found = store.donations_matching(
            wanted_values(key for i in again for key in keys[i] if key.column == TRANSACTION)
        )
        for donation_id, state in found.items():
            if donation_id not in states:
                states[donation_id] = state
                index.add(state)
        for i in again:
            decisions[i] = decide(events[i], keys[i], index)
    return states, decisions, keys


def _strong(decision: Resolution, keys, index: DonationIndex) -> bool:
    """Whether a strong key the first look-up covered (a reference or an own donation_id, which come
    before every transaction id) made this decision, so no transaction id can change it."""
    return decision.donation_id is not None and any(
        key.strong and key.column != TRANSACTION and index.find(key) == decision.donation_id for key in keys
    )


def _update_patients(store: FoldStore, changes: list[tuple[Credit | None, Credit | None]], result: BatchResult) -> None:
    by_patient: dict[int, list[tuple[Credit | None, Credit | None]]] = defaultdict(list)
    for old, new in changes:
        for patient_id in {
            credit.patient_id for credit in (old, new) if credit is not None and credit.patient_id is not None
        }:
            by_patient[patient_id].append(
                (
                    old if old and old.patient_id == patient_id else None,
                    new if new and new.patient_id == patient_id else None,
                )
            )
    if not by_patient:
        return
    patients = store.patients(by_patient)
    totals: dict[int, PatientTotals] = {}
    recompute: list[int] = []
    for patient_id, patient_changes in by_patient.items():
        patient = patients[patient_id]
        updated = patient_update(
            patient.funding_required, patient.funding_received, patient.status, patient.fully_funded_at, patient_changes
        )
        if updated is None:
            recompute.append(patient_id)
        else:
            totals[patient_id] = updated
    if recompute:
        credits = store.credits_of_patients(recompute)
        for patient_id in recompute:
            totals[patient_id] = patient_totals(patients[patient_id].funding_required, credits.get(patient_id, []))
    store.write_patients(totals)
    result.patients = totals
    result.patient_required = {patient_id: patients[patient_id].funding_required for patient_id in totals}


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
    checkout_ids = {
        e.donation_id
        for e in events
        if e.source == "checkout"
        and e.donation_id is not None
        and (checkpoint.rebuild_until is None or e.id > checkpoint.rebuild_until)
    }
    if high == donation_high and not checkout_ids:
        return [], high
    high, references, ids, transactions = store.donation_keys_above(donation_high)
    if checkout_ids:
        ids |= checkout_ids
        transactions |= store.transaction_ids_of(checkout_ids)
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
                    payments.error(f"Error processing Azam Pay callback: fold failed: {exc}")
                    raise
                # the whole batch was rolled back with its checkpoint: running it again applies it once
                logger.warning(
                    f"fold: batch rolled back by a lock conflict, trying again ({attempt}/{CONFLICT_ATTEMPTS - 1}): {exc}"
                )
                time.sleep(0.05 * attempt)
            except Exception as exc:
                payments.error(f"Error processing Azam Pay callback: fold failed: {exc}")
                raise
        report.batches += 1
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
    with transaction(engine) as session:
        report.lag_events, _ = fold_lag(session, CHECKPOINT)
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
            raise InvariantViolation("fold invariant violated: " + "; ".join(problems[:5]))
        store.count_events(fresh + filled)
        checkpoint.events_applied += len(fresh) + len(filled)
        quiet_until = checkpoint.rebuild_until
        if quiet_until is not None and checkpoint.position >= quiet_until:
            checkpoint.rebuild_until = None
        store.save_checkpoint(checkpoint, now)
        max_id = store.max_event_id() if progress else 0
    return result, checkpoint, fresh, retried, quiet_until, max_id


def announce_transitions(result: BatchResult, quiet_until: int | None = None) -> None:
    """The webhook guide's log phrases, once per real status change, after the batch committed. A change
    caused by an event up to quiet_until (a rebuild refolding what was announced before) is not repeated.

    Each "Updated patient funding" line gives the total after that donation, as the guide's one-callback-
    at-a-time view did, not the batch's final total: a batch that completes two donations of one patient
    says 25000.00 and then 35000.00. The last completion's line equals the total the batch stored."""
    announced = [(t, state) for t, state in result.transitions if quiet_until is None or t.event_id > quiet_until]
    received = _funding_before_completions(result, announced)
    for transition, state in announced:
        payments.info(f"Processed callback - External ID: {transition.reference}, Status: {transition.event_status}")
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
