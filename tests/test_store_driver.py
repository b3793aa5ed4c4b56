"""pipeline.store.driver.Driver.update_rows on both backends: on MySQL it goes through a temporary table,
which must neither end the transaction nor leave anything behind. Real SQLite file, real MariaDB."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError

from jobs.fold import run_fold
from pipeline.db import make_engine, transaction
from pipeline.errors import StoreError
from pipeline.sections import DatabaseConfig
from pipeline.store.driver import Driver
from tests.builders import add_donation, add_patient, append, at, callback_body


def _patients(backend) -> dict[int, tuple]:
    rows = backend.rows("SELECT id, funding_received, status FROM patients ORDER BY id")
    return {row[0]: (Decimal(str(row[1])), row[2]) for row in rows}


def _money(backend, amount: str):
    return int(Decimal(amount) * 100) if backend.name == "sqlite" else Decimal(amount)


def test_update_rows_sets_exactly_the_rows_named(backend, now):
    ids = [add_patient(backend.engine, now, name=f"P{i}") for i in range(4)]
    before = _patients(backend)
    with transaction(backend.engine) as session:
        raw = Driver(session.connection())
        raw.update_rows(
            "patients",
            ("funding_received", "status"),
            [(_money(backend, "12.50"), "FULLY_FUNDED", ids[0]), (_money(backend, "7"), "FUNDING", ids[2])],
        )
        raw.update_rows("patients", ("status",), [("FULLY_FUNDED", ids[3])])  # twice in one transaction
    after = _patients(backend)
    scale = 100 if backend.name == "sqlite" else 1
    assert after[ids[0]] == (Decimal("12.50") * scale, "FULLY_FUNDED")
    assert after[ids[2]] == (Decimal("7") * scale, "FUNDING")
    assert after[ids[3]] == (before[ids[3]][0], "FULLY_FUNDED")
    assert after[ids[1]] == before[ids[1]]


def test_update_rows_is_undone_with_its_transaction(backend, now):
    """On MySQL a statement with an implicit commit (TRUNCATE, a non-TEMPORARY CREATE) would have made the
    updates permanent before the rollback."""
    patient = add_patient(backend.engine, now)
    before = _patients(backend)
    with pytest.raises(RuntimeError):
        with transaction(backend.engine) as session:
            Driver(session.connection()).update_rows("patients", ("status",), [("FULLY_FUNDED", patient)])
            raise RuntimeError("the batch fails after its writes")
    assert _patients(backend) == before


def test_a_staging_table_left_by_a_failed_transaction_does_not_block_the_connection(mysql_backend, now):
    """MySQL: a batch that fails between CREATE and DROP (here a key named twice, which the staging table's
    primary key refuses) leaves the temporary table on its pooled connection; that connection's next batch still writes."""
    backend = mysql_backend
    patient = add_patient(backend.engine, now)
    with backend.engine.connect() as connection:
        raw = Driver(connection)
        failed = connection.begin()
        with pytest.raises(DBAPIError):
            raw.update_rows("patients", ("status",), [("FULLY_FUNDED", patient), ("FUNDING", patient)])
        failed.rollback()
        with connection.begin():
            raw.update_rows("patients", ("status",), [("FULLY_FUNDED", patient)])
    assert _patients(backend)[patient][1] == "FULLY_FUNDED"


def test_a_fold_without_the_temporary_table_grant_stops_with_one_line_and_loses_nothing(mysql_backend, now):
    """docs/deploy.md: a MySQL user granted less than ALL PRIVILEGES needs CREATE TEMPORARY TABLES. Without
    it the fold's batch fails whole (checkpoint and statuses untouched), and once granted the log is folded."""
    backend = mysql_backend
    database = backend.url.rsplit("/", 1)[1]
    user = "azamrecon_no_temp"
    grants = (
        f"DROP USER IF EXISTS '{user}'@'%'",
        f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{database}`.* TO '{user}'@'%'",
    )
    with backend.engine.begin() as connection:
        for statement in grants:
            connection.execute(text(statement))
    limited = make_engine(
        DatabaseConfig(
            url=make_url(backend.url).set(username=user, password="pw").render_as_string(hide_password=False)
        )
    )
    try:
        donation_id, reference = add_donation(backend.engine, now, patient_id=add_patient(backend.engine, now))
        append(backend.engine, callback_body(reference), at(now, 5))
        config = backend.config()
        with pytest.raises(StoreError) as refused:
            run_fold(limited, config, at(now, 10))
        assert "Access denied" in str(refused.value) and "\n" not in str(refused.value)
        assert backend.scalar("SELECT position FROM fold_checkpoints") in (None, 0)
        assert backend.scalar("SELECT status FROM donations WHERE id = :id", id=donation_id) == "PENDING"
        with backend.engine.begin() as connection:
            connection.execute(text(f"GRANT CREATE TEMPORARY TABLES ON `{database}`.* TO '{user}'@'%'"))
        limited.dispose()  # privileges are read at connect
        assert run_fold(limited, config, at(now, 20)).credits_added == 1
        assert backend.scalar("SELECT status FROM donations WHERE id = :id", id=donation_id) == "COMPLETED"
    finally:
        limited.dispose()
        with backend.engine.begin() as connection:
            connection.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))
