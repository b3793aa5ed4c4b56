"""Rebuild: reset every derived column and table and refold from event 0, or compute that rebuild in
memory and compare it with the live state (--check), or compute the state as known at an instant (--as-of)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Engine

from jobs.fold import FoldReport, collector_paused, run_fold
from pipeline.config import Config
from pipeline.db import transaction
from pipeline.fold_batch import fold_batch, reference_format, trust_policy
from pipeline.invariants import violations
from pipeline.logs import payments
from pipeline.portal_diff import difference_line, portal_as_of, portal_differences
from pipeline.snapshot import Snapshot, differences
from pipeline.store.checkpoint import CHECKPOINT
from pipeline.store.memory import MemoryFoldStore
from pipeline.store.snapshot import live_snapshot
from pipeline.store.state import SqlFoldStore

REBUILD_BATCH = 50_000

Progress = Callable[[int, int], None]


def rebuild(engine: Engine, config: Config, now: datetime, progress: Progress | None = None) -> FoldReport:
    """Reset derived state (one transaction, under the fold lock), then fold the whole log in batches.

    Each batch commits with its checkpoint, so a crash mid-rebuild is finished by the next fold. Until
    the log is refolded up to the newest event at the start (checkpoint.rebuild_until), every fold,
    scheduled ones included, stays quiet about the events up to it, and the poller waits: the statuses
    it would read are not recomputed yet (re-announcing old completions, or polling completed donations,
    would be wrong). Events that arrive meanwhile are announced once, whoever folds them.
    """
    with transaction(engine, immediate=True) as session:
        store = SqlFoldStore(session)
        store.lock_checkpoint(CHECKPOINT)
        store.reset_derived(CHECKPOINT)
        checkpoint = store.lock_checkpoint(CHECKPOINT)
        checkpoint.rebuild_until = store.max_event_id() or None
        store.save_checkpoint(checkpoint, now)
    # quiet up to rebuild_until (announced when first folded); a callback that arrives meanwhile is announced
    report = run_fold(engine, config, now, batch_size=max(config.fold.batch_size, REBUILD_BATCH), progress=progress)
    payments.info(
        f"Rebuild finished: {report.events} events folded in {report.batches} batches, "
        f"{report.credits_added} credits, {report.anomalies} anomalies, {report.transitions} status changes"
    )
    return report


def _fold_in_memory(
    memory: MemoryFoldStore, config: Config, until_id: int | None, skip: set[int], progress: Progress | None, total: int
) -> int:
    policy, references = trust_policy(config), reference_format(config)
    position = events = 0
    while True:
        batch = memory.events_after(position, REBUILD_BATCH, until_id=until_id)
        if not batch:
            return events
        position = batch[-1].id
        batch = [event for event in batch if event.id not in skip]
        with collector_paused():
            fold_batch(memory, batch, [], policy, references)
        events += len(batch)
        if progress:
            progress(position, total)


@dataclass
class CheckResult:
    differences: list[str]
    position: int
    events_compared: int
    lag_note: str
    # pipeline.invariants over the live state and over the rebuild, each line prefixed "live " or "rebuild "
    violations: list[str] = field(default_factory=list)


def check(engine: Engine, config: Config, progress: Progress | None = None) -> CheckResult:
    """Rebuild in memory up to the live checkpoint and list every difference from the live state. Writes nothing."""
    with transaction(engine, isolation="REPEATABLE READ") as session:
        reader = SqlFoldStore(session)
        checkpoint = reader.read_checkpoint(CHECKPOINT)
        total = reader.max_event_id()
        memory = MemoryFoldStore(session, donation_high=checkpoint.donation_high)
        compared = _fold_in_memory(
            memory, config, checkpoint.position, set(checkpoint.gap_ids()), progress, checkpoint.position
        )
        live, rebuilt = live_snapshot(session), memory.snapshot()
        found = differences(live, rebuilt)
        if config.portal.enabled and config.portal.write:  # the portal's rows whose owned columns differ from the fold
            found += [difference_line(row) for row in portal_differences(session, config, informational=False)]
        amounts = {donation_id: state.patient_amount for donation_id, state in memory.states.items()}
        broken = [f"live {line}" for line in violations(live, amounts)]
        broken += [f"rebuild {line}" for line in violations(rebuilt, amounts)]
    behind = total - checkpoint.position
    note = (
        f"live fold is at event {checkpoint.position}; {behind} newer event id(s) not folded yet and not compared"
        if behind
        else ""
    )
    return CheckResult(found, checkpoint.position, compared, note, broken)


def as_of(engine: Engine, config: Config, instant: datetime, progress: Progress | None = None) -> Snapshot:
    """The derived state as it was known at `instant`: donations and patients created by then, events received by then."""
    with transaction(engine, isolation="REPEATABLE READ") as session:
        memory = MemoryFoldStore(session, as_of=instant)
        _fold_in_memory(memory, config, None, set(), progress, SqlFoldStore(session).max_event_id())
        return memory.snapshot()


def as_of_data(engine: Engine, config: Config, instant: datetime, progress: Progress | None = None) -> dict:
    """as_of as plain data; in portal mode with the portal columns azamrecon owns, as of `instant` (`portal`)."""
    data = as_of(engine, config, instant, progress).as_dict()
    if config.portal.enabled:
        with transaction(engine) as session:
            data["portal"] = portal_as_of(session, data)
    return data
