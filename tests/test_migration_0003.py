"""Migration 0003 carries the old layout's derived facts over exactly: applied ids from donations.event_ids
into donation_events, the keys of waiting events into waiting_keys, the checkpoint's gaps as ranges."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from pipeline.config import Config
from pipeline.db import make_engine
from pipeline.schema import current_revision, schema_differences, upgrade
from tests.builders import callback_body
from tests.conftest import empty_database_url

NOW = "2026-01-14 09:30:00.000000"


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def old_database(request, tmp_path):
    """A database at revision 0002 (the layout before this migration)."""
    url = empty_database_url(request.param, tmp_path, "migration")
    engine = make_engine(Config().database.model_copy(update={"url": url}))
    upgrade(engine, "0002")
    yield engine
    engine.dispose()


def test_0003_carries_applied_ids_waiting_keys_and_gaps_over(old_database, tmp_path):
    engine = old_database
    body = callback_body("RHCI-DN-7-20260114093000", transaction_id="tx-7")
    stranger = callback_body("RHCI-DN-99-20260114093000", transaction_id="tx-99")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO donations (id, amount, currency, patient_amount, support_amount, charge_amount, charge_currency, msisdn, provider, "
                "external_reference, created_at, status, events_applied, event_ids, needs_check, amount_confirmed) "
                "VALUES (7, 25000, 'TZS', 25000, 0, 25000, 'TZS', '255758285812', 'Mpesa', 'RHCI-DN-7-20260114093000', :now, 'COMPLETED', 2, '1,3', 0, 1)"
            ),
            {"now": NOW},
        )
        for event_id, raw, ref, tx in (
            (1, body, "RHCI-DN-7-20260114093000", "tx-7"),
            (2, stranger, "RHCI-DN-99-20260114093000", "tx-99"),
            (3, body, "RHCI-DN-7-20260114093000", "tx-7"),
        ):
            connection.execute(
                text(
                    "INSERT INTO payment_events (id, received_at, source, body, body_sha256, utilityref, externalreference, transaction_ref, status, auth) "
                    "VALUES (:id, :now, 'callback', :body, 'x', :ref, :tx, :tx, 'SUCCESS', 'n/a')"
                ),
                {"id": event_id, "now": NOW, "body": raw, "ref": ref, "tx": tx},
            )
        connection.execute(
            text(
                "INSERT INTO anomalies (event_id, donation_id, kind, detail) VALUES (2, NULL, 'unknown_reference', 'no donation for x')"
            )
        )
        # a credited donation: a batch copy of `donations` is refused by this row's foreign key on SQLite
        connection.execute(
            text(
                "INSERT INTO funding_credits (donation_id, patient_id, amount, event_id, credited_at) VALUES (7, NULL, 25000, 1, :now)"
            ),
            {"now": NOW},
        )
        connection.execute(
            text(
                "INSERT INTO fold_checkpoints (name, position, gaps, events_applied, donation_high) VALUES ('main', 3, :gaps, 3, 7)"
            ),
            {"gaps": json.dumps([[10, "2026-01-14T09:30:00+00:00"], [11, "2026-01-14T09:30:00+00:00"]])},
        )
    upgrade(engine)
    assert current_revision(engine) == "0003" or current_revision(engine) > "0003"
    assert schema_differences(engine) == []
    with engine.connect() as connection:
        assert [
            tuple(r)
            for r in connection.execute(text("SELECT event_id, donation_id FROM donation_events ORDER BY event_id"))
        ] == [(1, 7), (3, 7)]
        keys = {tuple(r) for r in connection.execute(text("SELECT event_id, key_column, key_value FROM waiting_keys"))}
        gaps = json.loads(connection.execute(text("SELECT gaps FROM fold_checkpoints")).scalar())
    assert (
        (2, "external_reference", "RHCI-DN-99-20260114093000") in keys
        and (2, "id", "99") in keys
        and (2, "transaction_id", "tx-99") in keys
    )
    assert gaps == [[10, 10, "2026-01-14T09:30:00+00:00"], [11, 11, "2026-01-14T09:30:00+00:00"]]
    with engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM funding_credits")).scalar() == 1
        assert [tuple(r) for r in connection.execute(text("SELECT source, auth, count FROM event_counts"))] == [
            ("callback", "n/a", 3)
        ]
