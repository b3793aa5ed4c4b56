"""Secrets never reach storage (issue 17, docs/privacy.md), on a real SQLite file and on real MariaDB:

- no stored body, spool file or log holds a configured password: after callbacks through the receiver,
  an import of the old Django view's log, a spool replay, and `privacy scrub` of rows stored before;
- verification still works on the bytes received (current and previous password verified, a wrong one failed);
- the append-only guard lifts only for a sanctioned rewrite, of body and msisdn only, in its own transaction.
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from loguru import logger
from sqlalchemy import text
from starlette.testclient import TestClient

from jobs.cli import cli
from jobs.ingest import ingest_file
from jobs.rewrite import sanctioned_rewrite
from jobs.spool import ingest_spool
from pipeline.db import transaction
from pipeline.errors import ConfigError, StoreError
from pipeline.privacy import BodyRedactor, load_key, secret_marker
from pipeline.store.events import event_row
from pipeline.store.spool import spool_record
from receiver.app import CALLBACK_PATH, create_app
from receiver.spool import Spool
from tests.privacy_helpers import (
    CURRENT,
    JSON,
    LEGACY_LOG,
    LEGACY_PASSWORDS,
    PREVIOUS,
    WRONG,
    assert_append_only,
    callback,
    files_text,
    key_of,
    logging_to,
    pre_upgrade_rows,
    stored_text,
)
from tests.servers import add_donation, event_rows, write_config
from tests.test_spool import Outage

# --- secrets never reach storage -----------------------------------------------------------------


@pytest.fixture
def log_dir(tmp_path):
    yield tmp_path / "logs"
    logger.remove()


def test_callbacks_store_no_password_and_still_verify_current_and_previous(backend, log_dir):
    add_donation(backend.engine, "RHCI-DN-999-20251219120000")
    settings = {"webhook.password": CURRENT, "webhook.previous_password": PREVIOUS, "logging.dir": str(log_dir)}
    config = backend.config(**settings)
    bodies = [callback(password=CURRENT), callback(password=PREVIOUS), callback(password=WRONG)]
    with logging_to(config), TestClient(create_app(config)) as client:
        answers = [client.post(CALLBACK_PATH, content=body, headers=JSON).status_code for body in bodies]
        answers.append(
            client.post(CALLBACK_PATH, content=b'{"password": "%s", ' % CURRENT.encode(), headers=JSON).status_code
        )
        answers.append(
            client.post(
                CALLBACK_PATH, content=b"password=%s" % PREVIOUS.encode(), headers={"content-type": "text/plain"}
            ).status_code
        )
    assert answers == [200, 200, 403, 400, 415]
    rows = event_rows(backend.engine)
    assert [row.auth for row in rows] == ["verified", "verified", "failed", "unverified", "unverified"]
    everything = stored_text(backend) + files_text(log_dir)
    for secret in (CURRENT, PREVIOUS, WRONG):
        assert secret not in everything
    # the bytes received stay provable: their SHA-256 is kept
    assert [row.body_sha256 for row in rows[:3]] == [hashlib.sha256(body).hexdigest() for body in bodies]
    assert all(row.body_sha256 != hashlib.sha256(bytes(row.body)).hexdigest() for row in rows)
    # and `events show` says which password each one carried
    cli_config = write_config(
        backend.tmp_path / "show.yaml",
        {"database.url": backend.url, "privacy.key_file": config.privacy.key_file, **settings},
    )
    used = []
    for row in rows[:3]:
        shown = CliRunner().invoke(
            cli,
            ["events", "show", str(row.id), "--format", "json", "--config", str(cli_config)],
            env={"DATABASE_URL": None},
        )
        assert shown.exit_code == 0, shown.output
        used.append(json.loads(shown.stdout)["password_used"])
        assert json.loads(shown.stdout)["body"].count("redacted:hmac-sha256:") == 1
    assert used == ["webhook.password", "webhook.previous_password", "none configured now"]


def test_the_spool_holds_no_password_and_its_replay_neither(backend, tmp_path):
    outage = Outage(backend)
    try:
        spool_dir = backend.tmp_path / "spool"
        add_donation(outage.engine, "RHCI-DN-999-20251219120000")
        config = backend.config(
            **{"database.url": outage.url, "webhook.password": CURRENT, "webhook.previous_password": PREVIOUS}
        )
        bodies = [
            callback(password=CURRENT, reference="SP1"),
            callback(password=PREVIOUS, reference="SP2"),
            callback(password=WRONG, reference="SP3"),
        ]
        app = create_app(config)
        with logging_to(config), TestClient(app) as client:
            outage.down(app.state.engine)
            assert [client.post(CALLBACK_PATH, content=body, headers=JSON).status_code for body in bodies] == [503] * 3
            outage.up()
        spooled = b"".join(path.read_bytes() for path in spool_dir.iterdir())
        decoded = b"".join(base64.b64decode(json.loads(line)["body_b64"]) for line in spooled.splitlines())
        for secret in (CURRENT, PREVIOUS, WRONG):
            assert secret.encode() not in spooled and secret.encode() not in decoded
        # a line spooled by a receiver from before: its password is taken out when it is replayed
        old = spool_record(
            event_row(
                source="callback",
                body=callback(password=CURRENT, reference="SP4"),
                received_at=datetime.now(UTC),
                auth="verified",
            ),
            typed=True,
        )
        del old["body_sha256"]
        Spool(spool_dir).write([old])
        with logging_to(config) as log_dir:
            counts = ingest_spool(
                outage.engine,
                spool_dir,
                datetime.now(UTC),
                BodyRedactor(load_key(config.privacy.key_file), [CURRENT, PREVIOUS]),
            )
        assert counts["ingested"] == 4
        logged = files_text(log_dir)
        assert "spooled to" in logged and "replayed into the log" in logged
        assert not any(secret in logged for secret in (CURRENT, PREVIOUS, WRONG))
        rows = sorted(event_rows(outage.engine), key=lambda row: row.transaction_ref)  # two spool files: any order
        assert [row.transaction_ref for row in rows] == ["SP1", "SP2", "SP3", "SP4"]
        assert [row.auth for row in rows] == ["verified", "verified", "failed", "verified"]
        assert [row.body_sha256 for row in rows[:3]] == [hashlib.sha256(body).hexdigest() for body in bodies]
        assert rows[3].body_sha256 == hashlib.sha256(callback(password=CURRENT, reference="SP4")).hexdigest()
        text_of = "\n".join(bytes(row.body).decode() for row in rows)
        for secret in (CURRENT, PREVIOUS, WRONG):
            assert secret not in text_of
    finally:
        outage.close()


def test_the_old_views_log_imports_without_its_password(backend, now, log_dir):
    assert all(password in LEGACY_LOG.read_text() for password in LEGACY_PASSWORDS)
    config = backend.config(**{"webhook.password": LEGACY_PASSWORDS[0], "logging.dir": str(log_dir)})
    with logging_to(config):
        counts = ingest_file(backend.engine, config, LEGACY_LOG, now)
    assert counts["imported"] == 7
    rows = event_rows(backend.engine)
    assert [row.auth for row in rows] == [
        "verified",
        "failed",
        "unverified",
        "unverified",
        "verified",
        "verified",
        "verified",
    ]
    everything = stored_text(backend) + files_text(log_dir)
    assert not any(password in everything for password in LEGACY_PASSWORDS)
    assert json.loads(rows[0].body)["password"] == secret_marker(load_key(config.privacy.key_file), LEGACY_PASSWORDS[0])
    assert ingest_file(backend.engine, config, LEGACY_LOG, now)["imported"] == 0  # the dedupe keys did not move


def test_scrub_rewrites_old_rows_only_when_asked_by_name_and_records_it(backend, now):
    ids = pre_upgrade_rows(backend, now)
    before = {row.id: row for row in event_rows(backend.engine)}
    settings = {
        "database.url": backend.url,
        "webhook.password": CURRENT,
        "privacy.key_file": str(backend.tmp_path / "azamrecon.key"),
        "logging.dir": str(backend.tmp_path / "logs"),
    }
    cli_config = str(write_config(backend.tmp_path / "scrub.yaml", settings))
    runner = CliRunner()
    refused = runner.invoke(cli, ["privacy", "scrub", "--config", cli_config], env={"DATABASE_URL": None})
    assert refused.exit_code == 2 and "--rewrite-log" in refused.output
    counted = runner.invoke(cli, ["privacy", "scrub", "--dry-run", "--config", cli_config], env={"DATABASE_URL": None})
    assert counted.exit_code == 0 and "events_with_secrets=2 events_rewritten=0" in counted.output
    assert CURRENT in stored_text(backend)  # nothing changed yet
    done = runner.invoke(cli, ["privacy", "scrub", "--rewrite-log", "--config", cli_config], env={"DATABASE_URL": None})
    assert done.exit_code == 0 and "events_rewritten=2" in done.output, done.output
    assert CURRENT not in stored_text(backend)
    after = {row.id: row for row in event_rows(backend.engine)}
    for event_id in ids:  # only the body changed: the hash of the bytes received, the typed columns, the times stay
        kept = ("received_at", "body_sha256", "status", "amount", "utilityref", "transaction_ref", "msisdn", "auth")
        assert [getattr(after[event_id], name) for name in kept] == [getattr(before[event_id], name) for name in kept]
    assert after[ids[1]].body == before[ids[1]].body  # no secret: untouched
    [fact] = backend.rows(
        "SELECT operation, events_rewritten, first_event_id, last_event_id, key_fingerprint FROM privacy_rewrites"
    )
    assert (
        fact[:4] == ("scrub-secrets", 2, ids[0], ids[2])
        and fact[4] == load_key(settings["privacy.key_file"]).fingerprint
    )
    assert backend.scalar("SELECT COUNT(*) FROM privacy_control WHERE rewrite_allowed <> 0") == 0
    again = runner.invoke(
        cli, ["privacy", "scrub", "--rewrite-log", "--config", cli_config], env={"DATABASE_URL": None}
    )
    assert again.exit_code == 0 and "events_rewritten=0" in again.output
    assert_append_only(backend, ids[0])


def test_the_guard_lifts_for_body_and_msisdn_only_and_never_for_deletes(backend, now):
    [event_id, *_] = pre_upgrade_rows(backend, now)
    key = key_of()
    assert_append_only(backend, event_id)
    for statement in (
        "UPDATE payment_events SET amount = 1 WHERE id = :id",
        "UPDATE payment_events SET status = 'FAILED' WHERE id = :id",
        "UPDATE payment_events SET body_sha256 = 'x' WHERE id = :id",
        "DELETE FROM payment_events WHERE id = :id",
    ):
        with pytest.raises(StoreError, match="append-only"):
            with transaction(backend.engine, immediate=True) as session:
                with sanctioned_rewrite(session, key):
                    session.execute(text(statement), {"id": event_id})
    assert backend.scalar("SELECT COUNT(*) FROM privacy_control WHERE rewrite_allowed <> 0") == 0
    with transaction(backend.engine, immediate=True) as session:
        with sanctioned_rewrite(session, key):
            session.execute(
                text("UPDATE payment_events SET msisdn = 'm', body = :body WHERE id = :id"),
                {"id": event_id, "body": b"{}"},
            )
    assert backend.scalar(f"SELECT msisdn FROM payment_events WHERE id = {event_id}") == "m"
    assert backend.scalar("SELECT COUNT(*) FROM privacy_control WHERE rewrite_allowed <> 0") == 0
    assert_append_only(backend, event_id)
    with pytest.raises(ConfigError, match="not the key this database was hashed with"):
        with transaction(backend.engine, immediate=True) as session:
            with sanctioned_rewrite(session, key_of(2)):
                pass


@pytest.mark.mysql
def test_on_mariadb_another_session_stays_refused_while_a_rewrite_is_open(mysql_backend, now):
    mine, theirs, _ = pre_upgrade_rows(mysql_backend, now)
    with transaction(mysql_backend.engine, immediate=True) as session:
        with sanctioned_rewrite(session, key_of()):
            session.execute(text("UPDATE payment_events SET msisdn = 'mine' WHERE id = :id"), {"id": mine})
            with mysql_backend.engine.connect() as other:  # reads the committed flag, 0, while ours is 1
                other.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 2")
                with pytest.raises(Exception, match="append-only"):
                    other.exec_driver_sql(f"UPDATE payment_events SET msisdn = 'theirs' WHERE id = {theirs}")
                other.rollback()
    assert mysql_backend.scalar(f"SELECT msisdn FROM payment_events WHERE id = {mine}") == "mine"
    assert mysql_backend.scalar(f"SELECT msisdn FROM payment_events WHERE id = {theirs}") != "theirs"
