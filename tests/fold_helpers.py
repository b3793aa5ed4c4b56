"""Helpers for the fold job's tests (test_fold_job, test_fold_waiting, test_fold_log_lines, test_rebuild,
test_fold_cli): events written as the receiver writes them, rows read back, a populated log."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import insert, select, update

from jobs.rebuild import check, rebuild
from pipeline.db import transaction
from pipeline.events import EventFields, extract_fields
from pipeline.models import Donation, FundingCredit, Patient, PaymentEvent
from pipeline.snapshot import differences
from pipeline.store.events import event_row
from pipeline.store.snapshot import live_snapshot
from pipeline.store.state import SqlFoldStore
from tests.builders import add_donation, add_patient, append, at, callback_body


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
