"""The incremental fold job (jobs/fold.py) on a real SQLite file and a real MariaDB.

Each event exactly once under concurrent folds; no event skipped when ids commit out of order (docs/fold.md,
"Never skipping an event"); gaps given up after fold.gap_timeout_seconds; a batch rolled back by a lock
conflict run again; invariant violations abort the batch. Waiting events: test_fold_waiting.py; the
webhook guide's log lines: test_fold_log_lines.py.
"""

from __future__ import annotations

import gc
import threading
from decimal import Decimal

import pytest
from loguru import logger
from sqlalchemy import insert

from jobs.fold import collector_paused, run_fold
from jobs.operator import resolve_donation
from jobs.rebuild import check, rebuild
from pipeline.config import Config
from pipeline.db import make_engine, transaction
from pipeline.errors import InvariantViolation
from pipeline.models import FundingCredit
from pipeline.snapshot import differences
from tests.builders import add_donation, add_patient, at, callback_body
from tests.fold_helpers import (
    anomaly_kinds,
    applied_ids,
    assert_same_as_rebuild,
    checkpoint,
    credits,
    donation_row,
    failure,
    patient_row,
    populate,
    set_patient_received,
    snapshot,
    success,
    violations,
    write_event,
)

# -- a normal run ----------------------------------------------------------------------------------


def test_fold_applies_the_rules_end_to_end(backend, now):
    config = backend.config()
    ids = populate(backend, now)
    report = run_fold(backend.engine, config, at(now, 60))
    assert (report.events, report.position, report.gaps_waiting, report.lag_events) == (12, ids["events"][-1], 0, 0)
    statuses = {
        name: donation_row(backend, ids[name])["status"]
        for name in ("paid", "review", "share", "crossing", "general", "failed", "late")
    }
    assert statuses == {
        "paid": "COMPLETED",
        "review": "REVIEW",
        "share": "COMPLETED",
        "crossing": "COMPLETED",
        "general": "COMPLETED",
        "failed": "FAILED",
        "late": "COMPLETED",
    }
    assert {donation: (patient, amount) for donation, (patient, amount, _, _) in credits(backend).items()} == {
        ids["paid"]: (ids["amina"], Decimal("25000.00")),
        ids["share"]: (ids["baraka"], Decimal("28000.00")),  # patient_amount, not the 30000 total
        ids["crossing"]: (ids["baraka"], Decimal("5000.00")),
        ids["general"]: (None, Decimal("10000.00")),  # a general donation credits no patient
        ids["late"]: (ids["amina"], Decimal("15000.00")),
    }
    amina, baraka = patient_row(backend, ids["amina"]), patient_row(backend, ids["baraka"])
    assert (amina["funding_received"], amina["status"], amina["fully_funded_at"]) == (
        Decimal("40000.00"),
        "FUNDING",
        None,
    )
    # the crossing credit's instant
    assert (baraka["funding_received"], baraka["status"], baraka["fully_funded_at"]) == (
        Decimal("33000.00"),
        "FULLY_FUNDED",
        at(now, 13),
    )
    assert anomaly_kinds(backend, ids["paid"]) == ["duplicate", "conflicting_status"]
    assert anomaly_kinds(backend, ids["review"]) == ["amount_mismatch"]
    assert anomaly_kinds(backend, ids["late"]) == ["late_success"]
    assert sorted(anomaly_kinds(backend)) == ["invalid_payload", "unknown_reference"]
    cp = checkpoint(backend)
    assert (cp.position, cp.events_applied, cp.gaps) == (ids["events"][-1], 12, [])
    assert violations(backend) == []
    # nothing new: a second fold changes nothing
    before = snapshot(backend)
    again = run_fold(backend.engine, config, at(now, 70))
    assert (again.events, again.transitions, again.credits_added) == (0, 0, 0)
    assert differences(before, snapshot(backend)) == []
    assert_same_as_rebuild(backend, config, at(now, 80))


def test_operator_decision_resolves_review(backend, now):
    config = backend.config()
    patient = add_patient(backend.engine, now, required="50000")
    donation, reference = add_donation(backend.engine, now, patient_id=patient, amount="25000", patient_amount="20000")
    success(backend.engine, reference, at(now, 1), amount="25500")
    run_fold(backend.engine, config, at(now, 2))
    assert donation_row(backend, donation)["status"] == "REVIEW"
    assert backend.scalar("SELECT COUNT(*) FROM funding_credits") == 0
    event_id = resolve_donation(
        backend.engine, donation, "completed", "amount confirmed with the donor by phone", at(now, 300), actor="ops"
    )
    assert backend.scalar("SELECT source FROM payment_events WHERE id = :id", id=event_id) == "operator"
    run_fold(backend.engine, config, at(now, 301))
    row = donation_row(backend, donation)
    assert (row["status"], row["credit_event_id"]) == ("COMPLETED", event_id)
    assert credits(backend) == {donation: (patient, Decimal("20000.00"), event_id, at(now, 300))}
    assert patient_row(backend, patient)["funding_received"] == Decimal("20000.00")
    # an operator FAILED overrides the decision and takes the credit back
    resolve_donation(backend.engine, donation, "FAILED", "chargeback", at(now, 400), actor="ops")
    run_fold(backend.engine, config, at(now, 401))
    assert donation_row(backend, donation)["status"] == "FAILED"
    assert backend.scalar("SELECT COUNT(*) FROM funding_credits") == 0
    assert patient_row(backend, patient)["funding_received"] == Decimal("0.00")
    assert_same_as_rebuild(backend, config, at(now, 500))


def test_late_earlier_success_moves_the_credit_and_the_funded_instant(backend, now):
    """An older success committed after a newer one: replayed, completed_at and fully_funded_at move back."""
    config = backend.config()
    patient = add_patient(backend.engine, now, required="25000")
    donation, reference = add_donation(backend.engine, now, patient_id=patient, amount="25000")
    write_event(
        backend.engine, received_at=at(now, 50), body=callback_body(reference, transaction_id="tx-a"), event_id=2
    )
    run_fold(backend.engine, config, at(now, 51))
    assert patient_row(backend, patient)["status"] == "FULLY_FUNDED"
    write_event(
        backend.engine, received_at=at(now, 20), body=callback_body(reference, transaction_id="tx-a"), event_id=1
    )
    report = run_fold(backend.engine, config, at(now, 52))
    assert report.gaps_waiting == 0
    assert donation_row(backend, donation)["completed_at"] == at(now, 20)
    assert patient_row(backend, patient)["fully_funded_at"] == at(now, 20)
    assert anomaly_kinds(backend, donation) == ["duplicate"]
    assert credits(backend) == {donation: (patient, Decimal("25000.00"), 1, at(now, 20))}
    assert_same_as_rebuild(backend, config, at(now, 60))


# -- each event exactly once -----------------------------------------------------------------------


def test_two_folds_at_once_apply_each_event_exactly_once(backend, now):
    config = backend.config(**{"fold.batch_size": 4})
    patient = add_patient(backend.engine, now, required="1000000")
    references = [
        add_donation(backend.engine, now, patient_id=patient if i % 3 else None, amount="1000")[1] for i in range(24)
    ]
    for i, reference in enumerate(references):
        success(backend.engine, reference, at(now, i), amount="1000")
        if i % 4 == 0:
            failure(backend.engine, reference, at(now, i + 0.5), amount="1000")
        if i % 5 == 0:
            success(backend.engine, reference, at(now, i + 0.7), amount="1000")  # redelivered
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def fold_worker(seconds: float) -> None:
        engine = make_engine(Config().database.model_copy(update={"url": backend.url}))
        try:
            start.wait()
            for round_ in range(4):
                run_fold(engine, config, at(now, seconds + round_), announce=False)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            engine.dispose()

    def append_worker() -> None:
        engine = make_engine(Config().database.model_copy(update={"url": backend.url}))
        try:
            start.wait()
            for i, reference in enumerate(references[::2]):
                success(engine, reference, at(now, 100 + i), amount="1000")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [
        threading.Thread(target=fold_worker, args=(200,)),
        threading.Thread(target=fold_worker, args=(200.5,)),
        threading.Thread(target=append_worker),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    run_fold(backend.engine, config, at(now, 300))

    total = backend.scalar("SELECT COUNT(*) FROM payment_events")
    high = backend.scalar("SELECT MAX(id) FROM payment_events")
    cp = checkpoint(backend)
    assert (cp.position, cp.events_applied, cp.gaps) == (high, total, [])
    assert backend.scalar("SELECT SUM(events_applied) FROM donations") == total
    assert backend.scalar("SELECT COUNT(*) FROM funding_credits") == 24
    assert backend.scalar("SELECT COUNT(DISTINCT donation_id) FROM funding_credits") == 24
    assert backend.scalar("SELECT COUNT(*) FROM donations WHERE status = 'COMPLETED'") == 24
    # every event id appears in exactly one donation's applied list, once
    applied = [event_id for (event_id,) in backend.rows("SELECT event_id FROM donation_events")]
    assert sorted(applied) == [row[0] for row in backend.rows("SELECT id FROM payment_events ORDER BY id")]
    assert patient_row(backend, patient)["funding_received"] == Decimal("16000.00")
    assert violations(backend) == []
    assert_same_as_rebuild(backend, config, at(now, 400))


# -- docs/fold.md, "Never skipping an event": ids committed out of order -------------------------------


def test_event_committed_out_of_id_order_is_not_skipped(backend, now):
    """A inserts an event and holds its transaction; B inserts a later one and commits; the fold runs
    (a gap is recorded); A commits; the next fold applies A's event (replaying the donation)."""
    config = backend.config()
    patient = add_patient(backend.engine, now, required="25000")
    donation, reference = add_donation(backend.engine, now, patient_id=patient, amount="25000")
    first = success(
        backend.engine, "RHCI-DN-404-20200101000000", at(now, 1), transaction_id="tx-x"
    )  # unrelated, folded
    run_fold(backend.engine, config, at(now, 2))

    a_body = callback_body(reference, status="success", transaction_id="tx-a")
    b_body = callback_body(reference, status="failure", transaction_id="tx-a")
    if backend.name == "mysql":
        other = make_engine(Config().database.model_copy(update={"url": backend.url}))
        try:
            with other.connect() as connection_a:
                transaction_a = connection_a.begin()
                a_id = write_event(backend.engine, received_at=at(now, 10), body=a_body, connection=connection_a)
                b_id = write_event(
                    backend.engine, received_at=at(now, 11), body=b_body
                )  # B: its own transaction, committed
                assert b_id > a_id
                report = run_fold(backend.engine, config, at(now, 12))
                assert report.gaps_waiting == 1
                assert checkpoint(backend).gap_ids() == [a_id]
                assert donation_row(backend, donation)["status"] == "FAILED"
                transaction_a.commit()
        finally:
            other.dispose()
    else:
        a_id, b_id = first + 1, first + 2
        write_event(backend.engine, received_at=at(now, 11), body=b_body, event_id=b_id)
        report = run_fold(backend.engine, config, at(now, 12))
        assert report.gaps_waiting == 1
        assert checkpoint(backend).gap_ids() == [a_id]
        assert donation_row(backend, donation)["status"] == "FAILED"
        write_event(backend.engine, received_at=at(now, 10), body=a_body, event_id=a_id)

    report = run_fold(backend.engine, config, at(now, 13))
    assert report.gaps_waiting == 0
    row = donation_row(backend, donation)
    assert row["status"] == "COMPLETED"
    assert applied_ids(backend, donation) == [a_id, b_id]
    assert row["credit_event_id"] == a_id
    # replayed in id order: the failure is what conflicts, not a "late success"
    assert anomaly_kinds(backend, donation) == ["conflicting_status"]
    assert patient_row(backend, patient)["status"] == "FULLY_FUNDED"
    cp = checkpoint(backend)
    assert (cp.position, cp.events_applied, cp.gaps) == (b_id, 3, [])
    assert_same_as_rebuild(backend, config, at(now, 20))


def test_gap_older_than_the_timeout_is_given_up(backend, now, tmp_path):
    config = backend.config(**{"fold.gap_timeout_seconds": 60})
    donation, reference = add_donation(backend.engine, now, amount="25000")
    write_event(backend.engine, received_at=at(now, 1), body=callback_body(reference, status="failure"), event_id=1)
    write_event(backend.engine, received_at=at(now, 3), body=callback_body(reference, status="failure"), event_id=3)
    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(str(message)), level="WARNING")
    try:
        assert run_fold(backend.engine, config, now).gaps_waiting == 1
        assert run_fold(backend.engine, config, at(now, 60)).gaps_waiting == 1  # exactly the timeout: still waited for
        assert checkpoint(backend).gap_ids() == [2]
        assert run_fold(backend.engine, config, at(now, 61)).gaps_waiting == 0
    finally:
        logger.remove(sink)
    assert checkpoint(backend).gaps == []
    assert any("gave up waiting for 1 missing event id" in message for message in messages)
    # an event that turns up after that is no longer waited for by the incremental fold ...
    write_event(backend.engine, received_at=at(now, 2), body=callback_body(reference, status="success"), event_id=2)
    run_fold(backend.engine, config, at(now, 62))
    assert donation_row(backend, donation)["status"] == "FAILED"
    # ... and rebuild --check says so; a rebuild takes it in
    assert any(line.startswith(f"donation {donation} status") for line in check(backend.engine, config).differences)
    rebuild(backend.engine, config, at(now, 63))
    assert donation_row(backend, donation)["status"] == "COMPLETED"


def test_a_batch_rolled_back_by_a_lock_conflict_is_run_again(mysql_backend, now):
    """MySQL rolls a transaction back to break a deadlock (1213) or a lock wait timeout (1205); the fold
    runs such a batch again instead of failing (two first folds on a fresh database deadlocked in CI).
    Made deterministic with a 1 s lock wait timeout on the fold's connections and a holder of the
    checkpoint lock that lets go only once the fold has said it is trying again."""
    import time

    backend = mysql_backend
    config = backend.config()
    donation, reference = add_donation(backend.engine, now, amount="25000")
    run_fold(backend.engine, config, at(now, 1))  # the checkpoint row exists
    success(backend.engine, reference, at(now, 2))

    said: list[str] = []
    sink = logger.add(lambda message: said.append(str(message)), level="WARNING")
    connect = {"connect_timeout": 5, "charset": "utf8mb4", "init_command": "SET SESSION innodb_lock_wait_timeout = 1"}
    fold_engine = make_engine(Config().database.model_copy(update={"url": backend.url}), connect_args=connect)
    holder = backend.engine.raw_connection()
    outcome: dict = {}

    def fold() -> None:
        try:
            outcome["report"] = run_fold(fold_engine, config, at(now, 3))
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    try:
        holder.cursor().execute("SELECT name FROM fold_checkpoints WHERE name = 'main' FOR UPDATE")
        thread = threading.Thread(target=fold)
        thread.start()
        deadline = time.monotonic() + 20
        while not any("rolled back by a lock conflict" in line for line in said) and "error" not in outcome:
            assert time.monotonic() < deadline, "the fold neither retried nor failed"
            time.sleep(0.02)
        holder.rollback()
        thread.join(timeout=30)
    finally:
        holder.close()
        fold_engine.dispose()
        logger.remove(sink)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"].events == 1
    assert donation_row(backend, donation)["status"] == "COMPLETED"
    assert_same_as_rebuild(backend, config, at(now, 4))


# -- invariants ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tamper", ["patient_total", "stray_credit"])
def test_invariant_violation_aborts_the_batch_and_keeps_the_checkpoint(backend, now, tamper):
    config = backend.config()
    patient = add_patient(backend.engine, now, required="100000")
    donation, reference = add_donation(backend.engine, now, patient_id=patient, amount="25000")
    other, other_reference = add_donation(backend.engine, now, patient_id=patient, amount="5000")
    success(backend.engine, other_reference, at(now, 1), amount="5000")
    run_fold(backend.engine, config, at(now, 2))
    position = checkpoint(backend).position
    before = snapshot(backend)
    if tamper == "patient_total":
        set_patient_received(backend, patient, "1")
        success(backend.engine, reference, at(now, 3))
    else:  # a credit for a donation that is not COMPLETED, with the patient total made to agree
        with transaction(backend.engine) as session:
            values = {
                "donation_id": donation,
                "patient_id": patient,
                "amount": Decimal("25000"),
                "event_id": 1,
                "credited_at": at(now, 1),
            }
            session.execute(insert(FundingCredit.__table__).values(**values))
        set_patient_received(backend, patient, "30000")
        failure(backend.engine, reference, at(now, 3))
    tampered = snapshot(backend)
    with pytest.raises(InvariantViolation) as raised:
        run_fold(backend.engine, config, at(now, 4))
    assert f"donation {donation}" in str(raised.value) or f"patient {patient}" in str(raised.value)
    cp = checkpoint(backend)
    assert (cp.position, cp.events_applied) == (position, 1)
    assert differences(tampered, snapshot(backend)) == []  # the whole batch rolled back
    assert donation_row(backend, donation)["status"] == "PENDING"
    assert before != tampered


def test_collector_paused_is_restored_on_error():
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with collector_paused():
            assert not gc.isenabled()
            raise RuntimeError("batch failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()
