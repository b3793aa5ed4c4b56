"""One suite for every FoldStore (pipeline.fold_batch): SqlFoldStore on SQLite, SqlFoldStore on MariaDB, and
MemoryFoldStore (rebuild --check and --as-of). Each test runs once per store with the same assertions, reading
back through the store's own methods and through a Snapshot (live tables, or MemoryFoldStore.snapshot)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy.orm import Session

from pipeline.db import transaction
from pipeline.fold import COMPLETED, PENDING, AnomalyRecord, Credit, TrustPolicy, fold_donation
from pipeline.fold_batch import FoldStore, fold_batch
from pipeline.patient_funding import PatientTotals
from pipeline.resolution import ID, REFERENCE, TRANSACTION, lookup_keys
from pipeline.snapshot import Snapshot
from pipeline.store.memory import MemoryFoldStore
from pipeline.store.snapshot import live_snapshot
from pipeline.store.state import SqlFoldStore
from tests.builders import add_donation, add_patient, append, at, callback_body


@dataclass
class World:
    """The seeded rows: two patients, three donations (the third with a transaction id), four events."""

    patients: tuple[int, int]
    donations: tuple[int, int, int]
    references: tuple[str, str, str]
    events: tuple[int, int, int, int]


@dataclass
class Subject:
    store: FoldStore
    session: Session
    world: World

    def snapshot(self) -> Snapshot:
        if isinstance(self.store, MemoryFoldStore):
            return self.store.snapshot()
        return live_snapshot(self.session)


def _seed(engine, now) -> World:
    first, second = (
        add_patient(engine, now, required="30000"),
        add_patient(engine, now, required="90000", name="Baraka"),
    )
    d1, r1 = add_donation(engine, now, patient_id=first)
    d2, r2 = add_donation(engine, now, patient_id=first, amount="10000")
    d3, r3 = add_donation(engine, now, patient_id=second, transaction_id="tx-3")
    events = (
        append(engine, callback_body(r1, transaction_id="tx-1"), at(now, 1)),
        append(engine, callback_body(r2, amount="10000", transaction_id="tx-2"), at(now, 2)),
        append(engine, callback_body("RHCI-DN-99-20260114093000", transaction_id="tx-9"), at(now, 3)),
        append(engine, callback_body(r1, status="failure", transaction_id="tx-1"), at(now, 4)),
    )
    return World((first, second), (d1, d2, d3), (r1, r2, r3), events)


@pytest.fixture(params=["sql-sqlite", pytest.param("sql-mysql", marks=pytest.mark.mysql), "memory"])
def store(request, now) -> Subject:
    backend = request.getfixturevalue("mysql_backend" if request.param == "sql-mysql" else "sqlite_backend")
    world = _seed(backend.engine, now)
    with transaction(backend.engine) as session:
        made = MemoryFoldStore(session) if request.param == "memory" else SqlFoldStore(session)
        yield Subject(made, session, world)


def _credit(donation_id, patient_id, amount, event_id, now) -> Credit:
    return Credit(donation_id, patient_id, Decimal(amount), event_id, now)


def test_donations_matching_finds_each_key_and_nothing_else(store):
    d1, d2, d3 = store.world.donations
    found = store.store.donations_matching({REFERENCE: {store.world.references[0]}, ID: {d2}, TRANSACTION: {"tx-3"}})
    assert sorted(found) == [d1, d2, d3]
    assert (found[d1].patient_id, found[d1].charge_amount, found[d1].status) == (
        store.world.patients[0],
        Decimal("25000"),
        PENDING,
    )
    assert found[d3].transaction_id == "tx-3" and found[d2].external_reference == store.world.references[1]
    assert store.store.donations_matching({REFERENCE: {"RHCI-DN-99-1"}, ID: {999}, TRANSACTION: {"tx-x"}}) == {}


def test_events_by_ids_in_id_order_skipping_unknown_ids(store):
    e1, e2, e3, e4 = store.world.events
    events = store.store.events_by_ids([e4, e2, 99_999, e1])
    assert [event.id for event in events] == [e1, e2, e4]
    assert events[0].utilityref == store.world.references[0] and events[2].status == "FAILED"


def test_written_donations_are_read_back_and_snapshotted(store):
    d1 = store.world.donations[0]
    state = store.store.donations_matching({ID: {d1}})[d1]
    fold_donation(state, store.store.events_by_ids([store.world.events[0]]), TrustPolicy())
    assert state.status == COMPLETED
    store.store.write_donations([state])
    again = store.store.donations_matching({ID: {d1}})[d1]
    assert (again.status, again.completed_at, again.success_event_id, again.events_applied) == (
        COMPLETED,
        state.completed_at,
        store.world.events[0],
        1,
    )
    assert store.snapshot().donations[d1][0] == "COMPLETED"


def test_applied_events_per_donation_in_id_order(store):
    (d1, d2, d3), (e1, e2, _, e4) = store.world.donations, store.world.events
    assert store.store.applied_events([d1, d2]) == {}
    store.store.add_applied([(e4, d1), (e1, d1), (e2, d2)])
    assert store.store.applied_events([d1, d2, d3]) == {d1: [e1, e4], d2: [e2]}
    assert store.store.applied_events([d2]) == {d2: [e2]}


def test_anomalies_dropped_for_a_replay_or_a_retry(store):
    (d1, d2, _), (e1, e2, e3, e4) = store.world.donations, store.world.events
    duplicate = AnomalyRecord(e1, d1, "duplicate", "success already recorded")
    other = AnomalyRecord(e2, d2, "late_success", "success after FAILED")
    unknown = AnomalyRecord(e3, None, "unknown_reference", "no donation for RHCI-DN-99")
    conflict = AnomalyRecord(e4, d1, "reference_conflict", "two donations named")
    store.store.add_anomalies([duplicate, other, unknown, conflict])
    assert store.snapshot().anomalies == {tuple(a): 1 for a in (duplicate, other, unknown, conflict)}
    # a replay of d1 raises its anomalies again; a waiting event's anomaly naming d1 stays
    store.store.drop_anomalies(donation_ids=[d1])
    assert store.snapshot().anomalies == {tuple(a): 1 for a in (other, unknown, conflict)}
    store.store.drop_anomalies(waiting_events=[e3, e4])
    assert store.snapshot().anomalies == {tuple(other): 1}


def test_credit_changes_add_move_and_remove(store, now):
    (first, second), (d1, d2, d3), (e1, e2, e3, e4) = store.world.patients, store.world.donations, store.world.events
    c1, c2, c3 = (
        _credit(d1, first, "25000", e1, now),
        _credit(d2, first, "10000", e2, now),
        _credit(d3, second, "5", e3, now),
    )
    store.store.apply_credit_changes([(None, c1), (None, c2), (None, c3)])
    found = store.store.credits_of_patients([first, second, 999])
    assert {patient: sorted(credits) for patient, credits in found.items()} == {first: [c1, c2], second: [c3]}
    moved = _credit(d1, first, "20000", e4, now + timedelta(seconds=9))
    store.store.apply_credit_changes([(c1, moved), (c2, None)])
    assert store.store.credits_of_patients([first]) == {first: [moved]}
    assert store.store.credits_of_donations([d1, d2, d3, 999]) == {d1: moved, d3: c3}
    assert store.snapshot().credits == {
        d1: (first, "20000.00", e4, moved.credited_at.isoformat()),
        d3: (second, "5.00", e3, now.isoformat()),
    }


def test_patients_read_and_written(store, now):
    first, second = store.world.patients
    rows = store.store.patients([first, second, 999])
    assert sorted(rows) == [first, second]
    assert (rows[first].funding_required, rows[first].funding_received, rows[first].status) == (
        Decimal("30000"),
        Decimal("0"),
        "FUNDING",
    )
    assert rows[first].fully_funded_at is None and rows[second].funding_required == Decimal("90000")
    store.store.write_patients({first: PatientTotals(Decimal("35000"), "FULLY_FUNDED", now)})
    row = store.store.patients([first])[first]
    assert (row.funding_received, row.status, row.fully_funded_at) == (Decimal("35000"), "FULLY_FUNDED", now)
    assert store.snapshot().patients[first] == ("35000.00", "FULLY_FUNDED", now.isoformat())
    assert store.snapshot().patients[second] == ("0.00", "FUNDING", None)


def test_waiting_events_found_by_their_keys_until_dropped(store):
    e3 = store.store.events_by_ids([store.world.events[2]])[0]
    assert store.store.waiting_matching({(REFERENCE, e3.utilityref)}) == []
    store.store.set_waiting([], [(e3, lookup_keys(e3))])
    assert store.store.waiting_matching({(REFERENCE, e3.utilityref)}) == [e3.id]
    assert store.store.waiting_matching({(TRANSACTION, "tx-9")}) == [e3.id]
    assert store.store.waiting_matching({(REFERENCE, "RHCI-DN-1-1"), (ID, 42)}) == []
    store.store.set_waiting([e3.id], [])
    assert store.store.waiting_matching({(REFERENCE, e3.utilityref)}) == []


def test_a_batch_folds_to_the_same_state_through_every_store(store):
    """fold_batch over the seeded log: d1 completed then failed (a conflicting status), d2 completed, the
    third event names no donation and waits; the first patient is funded by both credits."""
    (first, second), (d1, d2, d3), (e1, e2, e3, e4) = store.world.patients, store.world.donations, store.world.events
    result = fold_batch(store.store, store.store.events_by_ids(store.world.events), [], TrustPolicy())
    assert (result.events, result.credits_added, result.anomalies) == (4, 2, 2)
    snapshot = store.snapshot()
    assert {donation: values[0] for donation, values in snapshot.donations.items()} == {
        d1: "COMPLETED",
        d2: "COMPLETED",
        d3: "PENDING",
    }
    assert sorted(snapshot.credits) == [d1, d2]
    assert snapshot.patients[first][:2] == ("35000.00", "FULLY_FUNDED") and snapshot.patients[second][0] == "0.00"
    assert sorted((event, kind) for event, _, kind, _ in snapshot.anomalies) == [
        (e3, "unknown_reference"),
        (e4, "conflicting_status"),
    ]
    assert store.store.applied_events([d1, d2]) == {d1: [e1, e4], d2: [e2]}
    assert store.store.waiting_matching({(TRANSACTION, "tx-9")}) == [e3]
