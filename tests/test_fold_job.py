"""The incremental fold job (jobs/fold.py) on a real SQLite file and a real MariaDB.

Each event exactly once under concurrent folds; no event skipped when ids commit out of order (DESIGN §4,
Hazard); gaps given up after fold.gap_timeout_seconds; unknown references applied once the donation
appears; invariant violations abort the batch; the webhook guide's log lines.
"""

from __future__ import annotations

import gc
import threading
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from loguru import logger
from sqlalchemy import insert, select, update

from jobs.fold import collector_paused, run_fold
from jobs.operator import resolve_donation
from jobs.rebuild import check, rebuild
from pipeline.config import Config
from pipeline.db import make_engine, transaction
from pipeline.errors import InvariantViolation
from pipeline.events import EventFields, extract_fields
from pipeline.logs import configure_logging, payments, secrets_of
from pipeline.models import Donation, FundingCredit, Patient, PaymentEvent
from pipeline.store.donations import make_reference
from pipeline.store.events import event_row
from pipeline.store.snapshot import differences, live_snapshot
from pipeline.store.state import SqlFoldStore, offered_keys
from tests.builders import add_donation, add_patient, append, at, callback_body

# -- helpers shared with test_rebuild.py and test_fold_cli.py ------------------------------------------


def write_event(
    engine,
    *,
    received_at: datetime,
    source="callback",
    body: bytes = b"{}",
    auth="n/a",
    donation_id=None,
    status=None,
    event_id=None,
    connection=None,
) -> int:
    """Append one event; with event_id, at that explicit log position (to leave or fill a gap)."""
    fields = extract_fields(body) if source in ("callback", "import") else EventFields(status=status, status_raw=status)
    row = event_row(
        source=source, body=body, received_at=received_at, auth=auth, fields=fields, donation_id=donation_id
    )
    if event_id is not None:
        row["id"] = event_id
    if connection is not None:
        return connection.execute(insert(PaymentEvent).values(**row)).inserted_primary_key[0]
    with transaction(engine) as session:
        return session.execute(insert(PaymentEvent).values(**row)).inserted_primary_key[0]


def success(engine, reference: str, when: datetime, amount="25000", transaction_id=None, auth="n/a", **extra) -> int:
    body = callback_body(
        reference, status="success", amount=amount, transaction_id=transaction_id or f"tx-{reference}", **extra
    )
    return append(engine, body, when, auth=auth)


def failure(
    engine, reference: str, when: datetime, amount="25000", status="failure", transaction_id=None, auth="n/a", **extra
) -> int:
    body = callback_body(
        reference, status=status, amount=amount, transaction_id=transaction_id or f"tx-{reference}", **extra
    )
    return append(engine, body, when, auth=auth)


def _row(backend, model, key) -> dict:
    """A row through the models' column types (money is integer cents on SQLite; raw SQL would show them)."""
    with transaction(backend.engine) as session:
        row = session.execute(select(model.__table__).where(model.__table__.c.id == key)).one()
        return dict(row._mapping)


def donation_row(backend, donation_id: int) -> dict:
    return _row(backend, Donation, donation_id)


def patient_row(backend, patient_id: int) -> dict:
    return _row(backend, Patient, patient_id)


def credits(backend) -> dict[int, tuple]:
    """donation_id -> (patient_id, amount, event_id, credited_at)."""
    table = FundingCredit.__table__
    with transaction(backend.engine) as session:
        return {
            row.donation_id: (row.patient_id, row.amount, row.event_id, row.credited_at)
            for row in session.execute(select(table))
        }


def set_patient_received(backend, patient_id: int, amount: str) -> None:
    with transaction(backend.engine) as session:
        session.execute(
            update(Patient.__table__)
            .where(Patient.__table__.c.id == patient_id)
            .values(funding_received=Decimal(amount))
        )


def applied_ids(backend, donation_id: int) -> list[int]:
    return [
        row[0]
        for row in backend.rows(
            "SELECT event_id FROM donation_events WHERE donation_id = :d ORDER BY event_id", d=donation_id
        )
    ]


def anomaly_kinds(backend, donation_id=None, event_id=None) -> list[str]:
    if event_id is not None:
        rows = backend.rows("SELECT kind FROM anomalies WHERE event_id = :e ORDER BY id", e=event_id)
    elif donation_id is None:
        rows = backend.rows("SELECT kind FROM anomalies WHERE donation_id IS NULL ORDER BY id")
    else:
        rows = backend.rows("SELECT kind FROM anomalies WHERE donation_id = :d ORDER BY event_id, id", d=donation_id)
    return [row[0] for row in rows]


def checkpoint(backend):
    with transaction(backend.engine) as session:
        return SqlFoldStore(session).read_checkpoint("main")


def violations(backend) -> list[str]:
    with transaction(backend.engine) as session:
        return SqlFoldStore(session).invariant_violations()


def snapshot(backend):
    with transaction(backend.engine) as session:
        return live_snapshot(session)


def assert_same_as_rebuild(backend, config, now) -> None:
    """rebuild --check finds nothing, and a real rebuild reproduces the live state exactly."""
    assert check(backend.engine, config).differences == []
    before = snapshot(backend)
    rebuild(backend.engine, config, now)
    after = snapshot(backend)
    assert differences(before, after) == []
    assert violations(backend) == []


def populate(backend, now: datetime) -> dict:
    """A realistic mix: completions, a review, a crossing of a funding goal, late success, duplicates,
    a general donation, an unknown reference and an invalid payload. Returns the ids by name."""
    engine = backend.engine
    amina = add_patient(engine, now, required="100000", name="Amina")
    baraka = add_patient(engine, now, required="30000", name="Baraka")
    ids = {"amina": amina, "baraka": baraka}
    for name, patient, amount, share in (
        ("paid", amina, "25000", None),
        ("review", amina, "25000", None),
        ("share", baraka, "30000", "28000"),
        ("crossing", baraka, "5000", None),
        ("general", None, "10000", None),
        ("failed", amina, "7000", None),
        ("late", amina, "15000", None),
    ):
        ids[name], ids[name + "_ref"] = add_donation(
            engine, now, patient_id=patient, amount=amount, patient_amount=share
        )
    ids["events"] = [
        success(engine, ids["paid_ref"], at(now, 10)),
        success(engine, ids["review_ref"], at(now, 11), amount="24000"),
        success(engine, ids["share_ref"], at(now, 12), amount="30000"),
        success(engine, ids["crossing_ref"], at(now, 13), amount="5000"),
        success(engine, ids["general_ref"], at(now, 14), amount="10000"),
        failure(engine, ids["failed_ref"], at(now, 15), amount="7000"),
        failure(engine, ids["late_ref"], at(now, 16), amount="15000"),
        success(engine, ids["late_ref"], at(now, 17), amount="15000"),
        success(engine, ids["paid_ref"], at(now, 18)),  # redelivered
        failure(engine, ids["paid_ref"], at(now, 19)),  # conflicting
        success(engine, "RHCI-DN-999-20251219120000", at(now, 20), amount="1000", transaction_id="tx-nobody"),
        append(engine, b'{"transactionstatus": "success"', at(now, 21)),
    ]
    return ids


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


# -- DESIGN §4, Hazard: ids committed out of order -------------------------------------------------


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


# -- unknown references ----------------------------------------------------------------------------


def test_unknown_reference_is_applied_once_the_donation_appears(backend, now):
    config = backend.config(**{"fold.batch_size": 2})
    patient = add_patient(backend.engine, now, required="25000")
    created = at(now, 30)
    expected_reference = make_reference("RHCI-DN", 1, created)  # the first donation of a fresh database
    early = success(backend.engine, expected_reference, at(now, 10), transaction_id="tx-early")
    by_transaction = failure(
        backend.engine, "RHCI-DN-0-20000101000000", at(now, 11), amount="25000", transaction_id="tx-early"
    )
    run_fold(backend.engine, config, at(now, 12))
    assert anomaly_kinds(backend) == ["unknown_reference", "unknown_reference"]
    assert {row[0] for row in backend.rows("SELECT event_id FROM anomalies")} == {early, by_transaction}

    donation, reference = add_donation(
        backend.engine, created, patient_id=patient, amount="25000", transaction_id="tx-early"
    )
    assert (donation, reference) == (1, expected_reference)
    later = success(backend.engine, reference, at(now, 40))
    report = run_fold(backend.engine, config, at(now, 41))
    assert report.events == 1
    row = donation_row(backend, donation)
    assert row["status"] == "COMPLETED"
    assert applied_ids(backend, donation) == [early, by_transaction, later]
    assert row["credit_event_id"] == early
    assert anomaly_kinds(backend) == []  # the unknown_reference anomalies are gone
    assert anomaly_kinds(backend, donation) == ["conflicting_status", "duplicate"]
    assert patient_row(backend, patient)["status"] == "FULLY_FUNDED"
    assert_same_as_rebuild(backend, config, at(now, 50))


def test_unknown_reference_is_retried_even_without_new_events(backend, now):
    config = backend.config()
    created = at(now, 30)
    early = success(backend.engine, make_reference("RHCI-DN", 1, created), at(now, 10))
    run_fold(backend.engine, config, at(now, 12))
    donation, _ = add_donation(backend.engine, created, amount="25000")
    report = run_fold(backend.engine, config, at(now, 41))
    assert report.events == 0
    assert donation_row(backend, donation)["status"] == "COMPLETED"
    assert anomaly_kinds(backend) == []
    assert donation_row(backend, donation)["credit_event_id"] == early
    assert_same_as_rebuild(backend, config, at(now, 50))


def test_a_zero_padded_donation_hint_is_retried_as_resolve_reads_it(backend, now):
    """additionalProperties.donation_id "01" names donation 1 (pipeline.resolution.as_id): the incremental
    retry must see it as a rebuild does, or the two would disagree. The callback states no reference, and
    its other facts (msisdn, operator) agree with the donation, so the weak key is accepted."""
    config = backend.config()
    early = append(
        backend.engine, callback_body("", transaction_id=None, additionalProperties={"donation_id": "01"}), at(now, 10)
    )
    run_fold(backend.engine, config, at(now, 12))
    assert anomaly_kinds(backend) == ["unknown_reference"]
    donation, _ = add_donation(backend.engine, at(now, 30), amount="25000")
    assert donation == 1
    run_fold(backend.engine, config, at(now, 41))
    assert donation_row(backend, donation)["credit_event_id"] == early
    assert anomaly_kinds(backend) == []
    assert_same_as_rebuild(backend, config, at(now, 50))


def test_a_waiting_hint_whose_donation_disagrees_becomes_a_conflict_as_in_a_rebuild(backend, now):
    """The same callback with a foreign reference: when donation 1 appears, the retry refuses it
    (reference_conflict, nothing credited), exactly as a rebuild does."""
    config = backend.config()
    success(
        backend.engine,
        "RHCI-DN-X-not-ours",
        at(now, 10),
        transaction_id="tx-hint",
        additionalProperties={"donation_id": "01"},
    )
    run_fold(backend.engine, config, at(now, 12))
    assert anomaly_kinds(backend) == ["unknown_reference"]
    donation, _ = add_donation(backend.engine, at(now, 30), amount="25000")
    run_fold(backend.engine, config, at(now, 41))
    assert donation_row(backend, donation)["status"] == "PENDING"
    assert anomaly_kinds(backend) == [] and anomaly_kinds(backend, donation_id=donation) == ["reference_conflict"]
    assert backend.scalar("SELECT COUNT(*) FROM funding_credits") == 0
    assert_same_as_rebuild(backend, config, at(now, 50))


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


# -- the webhook guide's log lines -----------------------------------------------------------------


@pytest.fixture
def logging_reset():
    yield
    logger.remove()
    logger.configure(patcher=None, extra={})


SECRET = "Pw-9f3c-not-for-logs"


def test_funding_line_gives_the_total_after_each_donation_of_a_batch(backend, now, logging_reset):
    config = backend.config()
    configure_logging(config.logging, component="fold", secrets=(), stderr_level=None)
    patient = add_patient(backend.engine, now, required="100000")
    first, first_reference = add_donation(backend.engine, now, patient_id=patient, amount="25000")
    second, second_reference = add_donation(backend.engine, now, patient_id=patient, amount="10000")
    success(backend.engine, first_reference, at(now, 1))
    success(backend.engine, second_reference, at(now, 2), amount="10000")
    run_fold(backend.engine, config, at(now, 3))  # one batch folds both

    log = (Path(config.logging.dir) / "payments.log").read_text(encoding="utf-8")
    lines = [
        line.split(" | ")[-1]
        for line in log.splitlines()
        if "completed successfully" in line or "Updated patient funding" in line
    ]
    assert lines == [
        f"✅ Donation {first} completed successfully",
        "Updated patient funding: 25000.00/100000.00",
        f"✅ Donation {second} completed successfully",
        "Updated patient funding: 35000.00/100000.00",
    ]


def test_log_lines_once_per_change_and_no_secrets(backend, now, logging_reset):
    config = backend.config(**{"webhook.password": SECRET})
    configure_logging(config.logging, component="fold", secrets=secrets_of(config), stderr_level=None)
    patient = add_patient(backend.engine, now, required="100000")
    paid, paid_reference = add_donation(backend.engine, now, patient_id=patient, amount="25000")
    failed, failed_reference = add_donation(backend.engine, now, patient_id=patient, amount="5000")
    success(backend.engine, paid_reference, at(now, 1), auth="verified", password=SECRET)
    failure(backend.engine, failed_reference, at(now, 2), amount="5000", auth="verified", password=SECRET)
    success(backend.engine, paid_reference, at(now, 3), auth="failed", password="wrong-" + SECRET)  # untrusted
    run_fold(backend.engine, config, at(now, 4))
    payments.info(f"a careless line: password={SECRET} and {SECRET}")  # the sinks must scrub it anyway

    directory = Path(config.logging.dir)
    log = (directory / "payments.log").read_text(encoding="utf-8")
    assert f"Processed callback - External ID: {paid_reference}, Status: SUCCESS" in log
    assert f"Processed callback - External ID: {failed_reference}, Status: FAILED" in log
    assert log.count("Processed callback - External ID: RHCI-DN-") == 2
    assert log.count(f"✅ Donation {paid} completed successfully") == 1
    assert log.count("Updated patient funding: 25000.00/100000.00") == 1
    assert log.count(f"❌ Donation {failed} payment failed") == 1
    assert "Rebuild finished" not in log

    rebuild(backend.engine, config, at(now, 5))
    log = (directory / "payments.log").read_text(encoding="utf-8")
    assert log.count("Processed callback - External ID: RHCI-DN-") == 2
    assert log.count(f"✅ Donation {paid} completed successfully") == 1
    assert log.count("Updated patient funding:") == 1
    assert log.count(f"❌ Donation {failed} payment failed") == 1
    assert log.count("Rebuild finished: 3 events folded") == 1

    files = list(directory.glob("*.log"))
    assert {path.name for path in files} >= {"payments.log", "app.log", "errors.log"}
    for path in files:
        assert SECRET not in path.read_text(encoding="utf-8"), path.name


def record_checkout(engine, donation_id: int, transaction_id: str, when: datetime) -> int:
    """What jobs.checkout records on AzamPay's answer: the donation's transaction id and the checkout
    event, in one transaction."""
    row = event_row(
        source="checkout",
        body=b'{"success":true}',
        received_at=when,
        auth="n/a",
        fields=EventFields(status="PENDING", transaction_ref=transaction_id),
        donation_id=donation_id,
    )
    with transaction(engine) as session:
        session.execute(update(Donation).where(Donation.id == donation_id).values(transaction_id=transaction_id))
        return session.execute(insert(PaymentEvent).values(**row)).inserted_primary_key[0]


def test_checkout_answer_resolves_a_callback_that_arrived_before_it(backend, now):
    """The callback names only AzamPay's transaction id, and is folded before the checkout answer that
    records that id is: it waits, and the checkout's batch resolves it."""
    config = backend.config()
    donation, _ = add_donation(backend.engine, now)
    early = success(backend.engine, "RHCI-DN-0-20000101000000", at(now, 1), transaction_id="tx-fast")
    run_fold(backend.engine, config, at(now, 2))
    assert anomaly_kinds(backend, event_id=early) == ["unknown_reference"]
    record_checkout(backend.engine, donation, "tx-fast", at(now, 3))
    run_fold(backend.engine, config, at(now, 4))
    assert anomaly_kinds(backend) == []
    assert donation_row(backend, donation)["credit_event_id"] == early
    assert_same_as_rebuild(backend, config, at(now, 5))


def test_rebuild_offers_waiting_events_the_checkouts_recorded_while_it_runs(backend, now, monkeypatch):
    """A rebuild does not offer the checkouts it refolds (their transaction ids were on the donations
    before it began), but a checkout recorded after it began can resolve an event it already folded."""
    monkeypatch.setattr("jobs.rebuild.REBUILD_BATCH", 2)
    config = backend.config(**{"fold.batch_size": 2})
    donation, _ = add_donation(backend.engine, now)
    other, other_reference = add_donation(backend.engine, now)
    early = success(backend.engine, "RHCI-DN-0-20000101000000", at(now, 1), transaction_id="tx-late")
    success(backend.engine, other_reference, at(now, 1))
    success(backend.engine, other_reference, at(now, 1))  # the second batch: this event, then the checkout
    recorded = []

    def checkout_after_the_first_batch(position: int, _high: int) -> None:
        if not recorded:
            recorded.append(record_checkout(backend.engine, donation, "tx-late", at(now, 3)))

    rebuild(backend.engine, config, at(now, 2), progress=checkout_after_the_first_batch)
    assert recorded and recorded[0] > early
    assert anomaly_kinds(backend) == []
    assert donation_row(backend, donation)["credit_event_id"] == early
    assert donation_row(backend, other)["status"] == "COMPLETED"
    assert_same_as_rebuild(backend, config, at(now, 5))


def test_waiting_events_are_read_again_in_every_batch(backend, now):
    """A fold run keeps the waiting events' keys across its batches; an event another fold left waiting
    between two of its batches must still be offered the next batch's checkouts."""
    config = backend.config(**{"fold.batch_size": 1})
    success(backend.engine, "RHCI-DN-0-20000101000000", at(now, 1), transaction_id="tx-zero")
    run_fold(backend.engine, config, at(now, 2))
    first, first_reference = add_donation(backend.engine, now)
    success(backend.engine, first_reference, at(now, 3))
    injected = {}

    def another_fold_between_batches(position: int, _high: int) -> None:
        if injected:
            return
        injected["event"] = success(backend.engine, "RHCI-DN-0-20000101000001", at(now, 4), transaction_id="tx-one")
        run_fold(backend.engine, config, at(now, 5), max_batches=1)
        assert anomaly_kinds(backend, event_id=injected["event"]) == ["unknown_reference"]
        injected["donation"], _ = add_donation(backend.engine, now)
        record_checkout(backend.engine, injected["donation"], "tx-one", at(now, 6))

    run_fold(backend.engine, config, at(now, 7), progress=another_fold_between_batches)
    assert anomaly_kinds(backend, event_id=injected["event"]) == []
    assert donation_row(backend, injected["donation"])["credit_event_id"] == injected["event"]
    assert donation_row(backend, first)["status"] == "COMPLETED"
    assert_same_as_rebuild(backend, config, at(now, 8))


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


def test_unknown_reference_lookup_with_every_donation_as_a_key(sqlite_backend, now):
    """The first fold (and the fold after a rebuild) offers *every* donation to the waiting unknown
    references. That lookup must stay under SQLite's bound-parameter limit (250000 on this build, 32766
    upstream): unchunked, it failed with "too many SQL variables" from ~42000 donations here (~5500 on a
    default build), and no fold could run at all."""
    many = 45_000
    reference = "RHCI-DN-44999-20260114093000"
    event = success(sqlite_backend.engine, reference, at(now, 1), transaction_id="tx-44999")
    run_fold(sqlite_backend.engine, sqlite_backend.config(), at(now, 2))
    assert anomaly_kinds(sqlite_backend, event_id=event) == ["unknown_reference"]
    references = {f"RHCI-DN-{i}-20260114093000" for i in range(many)}
    transactions = {f"tx-{i}" for i in range(many)}
    with transaction(sqlite_backend.engine) as session:
        store = SqlFoldStore(session)
        assert store.waiting_matching(offered_keys(range(1, many), references, transactions)) == [event]
        assert store.waiting_matching(offered_keys((), {"RHCI-DN-1-20260114093000"})) == []
