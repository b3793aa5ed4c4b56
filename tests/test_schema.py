"""Migrations produce exactly the models' schema; the log is append-only in the database itself."""

import pytest
from sqlalchemy import text

from pipeline.db import transaction
from pipeline.errors import StoreError
from pipeline.schema import current_revision, schema_differences, upgrade
from pipeline.store.events import append_event, event_row


def test_migrations_match_models(backend):
    assert schema_differences(backend.engine) == []


def test_upgrade_is_idempotent(backend):
    before = current_revision(backend.engine)
    upgrade(backend.engine)
    assert current_revision(backend.engine) == before is not None


def _one_event(backend, now):
    with transaction(backend.engine) as session:
        return append_event(session, event_row(source="callback", body=b"{}", received_at=now, auth="n/a"))


def test_update_and_delete_are_refused(backend, now):
    event_id = _one_event(backend, now)
    for statement in (
        f"UPDATE payment_events SET status='SUCCESS' WHERE id={event_id}",
        f"DELETE FROM payment_events WHERE id={event_id}",
    ):
        with pytest.raises(StoreError, match="append-only"):
            with transaction(backend.engine) as session:
                session.execute(text(statement))
    assert backend.scalar("SELECT COUNT(*) FROM payment_events") == 1
    assert backend.scalar("SELECT status FROM payment_events") is None


def test_sqlite_pragmas(sqlite_backend):
    with sqlite_backend.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
