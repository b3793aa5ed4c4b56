"""Data anyone can send never stops the fold for good (hostile traffic, faults 2 and 3), on MariaDB where
the old columns overflowed, and on SQLite: 100,000 events naming one donation, 10,000 skipped ids,
auto_increment_increment=2, and unmatched events that wait."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event

from jobs.fold import run_fold
from jobs.rebuild import check
from pipeline.db import make_engine, transaction
from pipeline.events import extract_fields
from pipeline.store.driver import Driver
from pipeline.store.events import event_row
from pipeline.store.state import SqlFoldStore
from tests.builders import add_donation, append, callback_body

T0 = datetime(2026, 1, 14, 9, 30, tzinfo=UTC)


def flood(engine, rows: list[dict], ids: list[int] | None = None) -> None:
    """Append rows fast (one executemany), optionally at explicit ids (to leave skipped ids)."""
    columns = list(rows[0]) + (["id"] if ids else [])
    with transaction(engine) as session:
        raw = Driver(session.connection())
        values = []
        for position, row in enumerate(rows):
            value = [row[column] for column in rows[0]]
            value = [raw.bind_when(v) if isinstance(v, datetime) else v for v in value]
            values.append(value + ([ids[position]] if ids else []))
        for start in range(0, len(values), 5000):
            raw.many(
                f"INSERT INTO payment_events ({', '.join(columns)}) VALUES {raw.marks(len(columns))}",
                values[start : start + 5000],
            )


def anonymous(donation_id: int, at: datetime) -> dict:
    body = json.dumps({"transactionstatus": "x", "additionalProperties": {"donation_id": str(donation_id)}}).encode()
    fields = extract_fields(body)
    row = event_row(source="callback", body=body, received_at=at, auth="unverified", fields=fields)
    row.pop("amount")
    return row


def test_100000_events_naming_one_donation_do_not_stop_crediting(backend):
    """Fault 2: 15,000 unauthenticated bodies naming donation 1 overflowed donations.event_ids (TEXT) on
    MariaDB; every later fold failed and a genuine callback for another donation stayed PENDING."""
    config = backend.config(**{"webhook.password": "pw-1234", "fold.batch_size": 20_000})
    victim, _ = add_donation(backend.engine, T0)
    other, reference = add_donation(backend.engine, T0)
    flood(backend.engine, [anonymous(victim, T0) for _ in range(100_000)])
    run_fold(backend.engine, config, T0 + timedelta(seconds=1))
    genuine = append(
        backend.engine,
        callback_body(reference, transaction_id="tx-genuine"),
        T0 + timedelta(seconds=2),
        auth="verified",
    )
    started = time.monotonic()
    run_fold(backend.engine, config, T0 + timedelta(seconds=3))
    took = time.monotonic() - started
    print(f"\n{backend.name}: the genuine callback's fold after 100,000 flood events took {took:.3f} s")
    assert backend.scalar("SELECT status FROM donations WHERE id = :d", d=other) == "COMPLETED"
    assert backend.scalar("SELECT credit_event_id FROM donations WHERE id = :d", d=other) == genuine
    assert took <= 2.0, f"the genuine callback's fold took {took:.2f} s"
    assert backend.scalar("SELECT events_applied FROM donations WHERE id = :d", d=victim) == 100_000
    assert backend.scalar("SELECT COUNT(*) FROM donation_events WHERE donation_id = :d", d=victim) == 100_000
    assert backend.scalar("SELECT status FROM donations WHERE id = :d", d=victim) == "PENDING"


def test_10000_skipped_ids_are_awaited_and_saved(backend):
    """Fault 3: ~1,456 outstanding gaps overflowed fold_checkpoints.gaps on MariaDB; the checkpoint was
    never saved, so the gap timeout never released them and crediting stopped for good."""
    config = backend.config()
    _, reference = add_donation(backend.engine, T0)
    rows = [anonymous(999_999, T0) for _ in range(10_000)]
    flood(backend.engine, rows, ids=[2 * n for n in range(1, 10_001)])  # every odd id below 20,000 skipped
    report = run_fold(backend.engine, config, T0)
    assert report.gaps_waiting == 10_000
    with transaction(backend.engine) as session:
        assert len(SqlFoldStore(session).read_checkpoint("main").gaps) == 10_000
    append(backend.engine, callback_body(reference), T0 + timedelta(seconds=1))
    run_fold(backend.engine, config, T0 + timedelta(seconds=2))
    assert backend.scalar("SELECT status FROM donations WHERE external_reference = :r", r=reference) == "COMPLETED"
    # after the gap timeout they are given up, and the checkpoint shrinks
    report = run_fold(backend.engine, config, T0 + timedelta(seconds=config.fold.gap_timeout_seconds + 10))
    assert report.gaps_waiting == 0


def test_gaps_past_the_cap_are_given_up_oldest_first(backend):
    config = backend.config(**{"fold.max_gaps": 100})
    flood(backend.engine, [anonymous(999_999, T0) for _ in range(300)], ids=[2 * n for n in range(1, 301)])
    report = run_fold(backend.engine, config, T0)
    assert report.gaps_waiting == 100
    with transaction(backend.engine) as session:
        assert min(SqlFoldStore(session).read_checkpoint("main").gap_ids()) == 401  # the newest 100 odd ids below 600


@pytest.mark.mysql
def test_auto_increment_increment_is_read_not_assumed(mysql_backend):
    """Galera and master-master setups set auto_increment_increment=2: every other id never exists, and a
    fold that assumed a step of 1 awaited thousands of ids that cannot appear."""
    backend = mysql_backend
    engine = make_engine(backend.config().database)
    event.listen(
        engine,
        "connect",
        lambda connection, record: connection.cursor().execute("SET SESSION auto_increment_increment = 2"),
    )
    try:
        config = backend.config()
        with transaction(engine) as session:
            rows = [anonymous(999_999, T0) for _ in range(3000)]
            for row in rows:
                session.connection().exec_driver_sql(
                    "INSERT INTO payment_events (received_at, source, body, body_sha256, auth) VALUES (%s, 'callback', %s, %s, 'unverified')",
                    (T0.replace(tzinfo=None), row["body"], hashlib.sha256(row["body"]).hexdigest()),
                )
        ids = [row[0] for row in backend.rows("SELECT id FROM payment_events ORDER BY id")]
        assert ids[1] - ids[0] == 2
        report = run_fold(engine, config, T0)
        assert report.events == 3000 and report.gaps_waiting == 0
        # a second writer (another offset) whose id 2 * 3000 + 2 is still in flight: it is awaited
        top = ids[-1]
        flood(engine, [anonymous(999_999, T0) for _ in range(3)], ids=[top + 1, top + 2, top + 5])
        report = run_fold(engine, config, T0)
        with transaction(engine) as session:
            assert SqlFoldStore(session).read_checkpoint("main").gap_ids() == [top + 3, top + 4]
    finally:
        engine.dispose()


def test_unmatched_events_wait_in_an_index_and_retire(backend):
    """Fault 6: each fold that saw a new donation re-read every waiting event. Now a new donation finds its
    events through waiting_keys, and events older than fold.waiting_days stop being offered."""
    config = backend.config(**{"fold.waiting_days": 1})
    early = append(backend.engine, callback_body("RHCI-DN-1-20260114093000", transaction_id="tx-early"), T0)
    flood(backend.engine, [anonymous(500_000 + n, T0) for n in range(2000)])
    run_fold(backend.engine, config, T0 + timedelta(seconds=1))
    assert backend.scalar("SELECT COUNT(DISTINCT event_id) FROM waiting_keys") == 2001
    with transaction(backend.engine) as session:
        store = SqlFoldStore(session)
        assert store.waiting_matching({("external_reference", "RHCI-DN-1-20260114093000")}) == [early]
    # an event received two days later moves the log's clock on: the waiting events are retired, and a
    # donation that appears now is not offered them
    append(backend.engine, b"{}", T0 + timedelta(days=2))
    run_fold(backend.engine, config, T0 + timedelta(days=2))
    assert backend.scalar("SELECT COUNT(*) FROM waiting_keys") == 0
    assert backend.scalar("SELECT COUNT(*) FROM anomalies WHERE kind = 'unknown_reference'") == 2001  # still recorded
    assert backend.scalar("SELECT COUNT(*) FROM anomalies WHERE kind = 'invalid_payload'") == 1
    donation, reference = add_donation(backend.engine, T0)
    assert donation == 1 and reference.startswith("RHCI-DN-1-")
    run_fold(backend.engine, config, T0 + timedelta(days=2, seconds=1))
    assert backend.scalar("SELECT status FROM donations WHERE id = 1") == "PENDING"
    # rebuild --check lists what a rebuild reconsiders, and a rebuild applies it
    assert "donation 1 status: live 'PENDING' rebuild 'COMPLETED'" in check(backend.engine, config).differences
    from jobs.rebuild import rebuild

    rebuild(backend.engine, config, T0 + timedelta(days=2, seconds=2))
    assert backend.scalar("SELECT status FROM donations WHERE id = 1") == "COMPLETED"
