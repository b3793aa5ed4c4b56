"""pipeline.store.driver.Driver.update_rows on both backends: on MySQL it goes through a temporary table,
which must neither end the transaction nor leave anything behind. Real SQLite file, real MariaDB."""
from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy.exc import DBAPIError

from pipeline.db import transaction
from pipeline.store.driver import Driver
from tests.builders import add_patient


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
        raw.update_rows("patients", ("funding_received", "status"), [(_money(backend, "12.50"), "FULLY_FUNDED", ids[0]), (_money(backend, "7"), "FUNDING", ids[2])])
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
