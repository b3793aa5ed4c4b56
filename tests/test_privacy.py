"""Secrets and personal data at rest (issue 17, docs/privacy.md), on a real SQLite file and on real MariaDB:

- no stored body, spool file or log holds a configured password: after callbacks through the receiver,
  an import of the old Django view's log, a spool replay, and `privacy scrub` of rows stored before;
- verification still works on the bytes received (current and previous password verified, a wrong one failed);
- after the retention window (a controlled `now`), no full phone number is left in the database or the
  log files, and `rebuild --check` is clean;
- the append-only guard lifts only for a sanctioned rewrite, of body and msisdn only, in its own transaction.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from loguru import logger
from sqlalchemy import text
from starlette.testclient import TestClient

from jobs.cli import cli
from jobs.fold import run_fold
from jobs.ingest import ingest_file
from jobs.privacy import erase_donor, find_donor, retain, sanctioned_rewrite, sweep_logs
from jobs.rebuild import check
from jobs.spool import ingest_spool
from pipeline.auth import Authenticator
from pipeline.config import load_config
from pipeline.db import transaction
from pipeline.errors import ConfigError, InputError, StoreError
from pipeline.events import decode_json, extract_fields
from pipeline.logs import SizeRotation, configure_logging, open_log_file, secrets_of
from pipeline.privacy import BodyRedactor, PrivacyKey, load_key, retained_msisdn, secret_marker, which_secret
from pipeline.store.events import append_event, event_row
from pipeline.store.spool import spool_record
from receiver.app import CALLBACK_PATH, create_app
from receiver.spool import Spool
from tests.conftest import fixture_bytes
from tests.servers import add_donation, event_rows, write_config
from tests.test_spool import Outage

JSON = {"content-type": "application/json"}
CURRENT, PREVIOUS, WRONG = "Hook-current-5f1e2d3c", "Hook-previous-9a8b7c6d", "Hook-wrong-00000000"
LEGACY_LOG = Path(__file__).parent / "fixtures" / "legacy" / "payments.log"
LEGACY_PASSWORDS = ("legacy-hook-pw-7781", "wrong-hook-pw-0000")
HASHED = re.compile(r"hmac:[0-9a-f]{16}:\d{3}")


def key_of(seed: int = 1) -> PrivacyKey:
    return PrivacyKey(bytes([seed]) * 32)


def callback(**changes) -> bytes:
    data = json.loads(fixture_bytes("callback_guide_example.json"))
    data.update(changes)
    return json.dumps(data).encode()


def stored_text(backend) -> str:
    """Every value of every row of every table, as one string: "anywhere in the database"."""
    from pipeline.models import metadata

    parts = []
    with backend.engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(table.select()):
                parts += [
                    bytes(value).decode("utf-8", "replace") if isinstance(value, (bytes, memoryview)) else str(value)
                    for value in row
                ]
    return "\n".join(parts)


def files_text(directory: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in directory.rglob("*") if path.is_file())


@contextlib.contextmanager
def logging_to(config):
    configure_logging(config.logging, component="test", secrets=secrets_of(config), stderr_level=None)
    try:
        yield Path(config.logging.dir)
    finally:
        logger.remove()


# --- pure rules ---------------------------------------------------------------------------------


def test_the_marker_is_keyed_and_tells_which_password_was_sent():
    key, other = key_of(1), key_of(2)
    marker = secret_marker(key, CURRENT)
    assert re.fullmatch(r"redacted:hmac-sha256:[0-9a-f]{32}", marker)
    assert marker != secret_marker(other, CURRENT)  # not a plain hash: without the key it proves nothing
    assert hashlib.sha256(CURRENT.encode()).hexdigest()[:32] not in marker
    candidates = (("webhook.password", CURRENT), ("webhook.previous_password", PREVIOUS))
    assert which_secret(key, marker, candidates) == "webhook.password"
    assert which_secret(key, secret_marker(key, PREVIOUS), candidates) == "webhook.previous_password"
    assert which_secret(key, secret_marker(key, WRONG), candidates) is None
    assert which_secret(other, marker, candidates) is None


def test_a_stored_body_loses_its_secrets_and_keeps_everything_else_as_written():
    key = key_of()
    raw = (
        b'{"password": "%s", "signature": "c2lnbmVk", "amount": 25000.000000000001, "transactionstatus": "success",'
        b' "utilityref": "RHCI-DN-7-x", "msisdn": "0758285812", "nested": {"api_key": 12345, "token": "", "list": [{"secret": "s-1"}]},'
        b' "name": "Ama\\u00efa \\ud800"}' % CURRENT.encode()
    )
    decoded = decode_json(raw)
    stored = BodyRedactor(key).stored_body(raw, decoded)
    assert stored is not None and CURRENT.encode() not in stored and b"s-1" not in stored and b"12345" not in stored
    data = json.loads(stored)
    assert data["password"] == secret_marker(key, CURRENT)
    assert data["signature"] == "c2lnbmVk"  # no secret: it proves the body, it cannot forge one
    assert data["nested"]["token"] == ""  # an empty value hides nothing
    assert b'"amount":25000.000000000001' in stored  # the number as written, not 25000.0
    before, after = extract_fields(raw, decoded), extract_fields(stored)
    assert (before.amount, before.amount_error, before.msisdn, before.utilityref) == (
        after.amount,
        after.amount_error,
        after.msisdn,
        after.utilityref,
    )
    assert before.amount is None and before.amount_error  # three decimals: unusable either way
    # idempotent, and nothing to do for a body without a secret
    assert BodyRedactor(key).stored_body(stored, decode_json(stored)) is None
    plain = fixture_bytes("callback_guide_example.json")  # "password": ""
    assert BodyRedactor(key).stored_body(plain, decode_json(plain)) is None


def test_a_body_that_is_no_json_object_loses_the_configured_passwords_as_written():
    redactor = BodyRedactor(key_of(), [CURRENT, PREVIOUS, "abc"])
    stored = redactor.stored_body(b'password=%s&x={"password": "%s"' % (CURRENT.encode(), PREVIOUS.encode()), None)
    assert CURRENT.encode() not in stored and PREVIOUS.encode() not in stored
    assert secret_marker(key_of(), CURRENT).encode() in stored
    assert redactor.stored_body(b"abc nothing configured here", None) is None  # too short to be replaced as text


def test_equal_numbers_hash_equal_with_their_last_three_digits():
    key = key_of()
    hashed = retained_msisdn(key, "255758285812")
    assert HASHED.fullmatch(hashed) and hashed.endswith(":812")
    assert hashed == retained_msisdn(key, "255758285812") != retained_msisdn(key, "255758285813")
    assert hashed != retained_msisdn(key_of(2), "255758285812")


def test_the_key_file_is_created_0600_once_and_refused_when_garbled(tmp_path):
    path = tmp_path / "k" / "azamrecon.key"
    with pytest.raises(ConfigError, match="privacy.key_file"):
        load_key(path)  # its directory does not exist
    path.parent.mkdir()
    with pytest.raises(ConfigError, match="does not exist"):
        load_key(path, create=False)
    first = load_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path).fingerprint == first.fingerprint
    assert first.fingerprint not in path.read_text() and path.read_text().strip() not in repr(first)
    path.write_text("not a key\n")
    with pytest.raises(ConfigError, match="does not hold a key"):
        load_key(path)


def test_previous_password_config_env_and_the_authenticator():
    config = load_config(
        None, environ={"AZAM_PAY_WEBHOOK_PASSWORD": CURRENT, "AZAM_PAY_WEBHOOK_PREVIOUS_PASSWORD": PREVIOUS}
    )
    assert config.webhook.passwords() == (("webhook.password", CURRENT), ("webhook.previous_password", PREVIOUS))
    assert set(secrets_of(config)) >= {CURRENT, PREVIOUS}
    with pytest.raises(ConfigError, match="previous_password"):
        load_config(None, environ={"AZAM_PAY_WEBHOOK_PREVIOUS_PASSWORD": PREVIOUS})
    fields = lambda password: extract_fields(callback(password=password))  # noqa: E731
    rotating = Authenticator(password=CURRENT, previous_password=PREVIOUS)
    assert [rotating.check(fields(p), b"") for p in (CURRENT, PREVIOUS, WRONG)] == ["verified", "verified", "failed"]
    assert Authenticator(password=CURRENT).check(fields(PREVIOUS), b"") == "failed"  # the window closed


def test_log_files_are_0640_and_start_anew_each_utc_day(tmp_path):
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "payments.log"
        os.close(open_log_file(str(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND))
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        path.chmod(0o644)  # left by an older version: narrowed when opened again
        os.close(open_log_file(str(path), os.O_WRONLY | os.O_APPEND))
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old_umask)
    day = 1_800_000_000 - 1_800_000_000 % 86400
    clock = [day + 3600.0]
    rotation = SizeRotation(10_000, clock=lambda: clock[0])
    with open(path, "a") as handle:
        handle.write("a line\n")
        handle.flush()
        os.utime(path, (day + 3600, day + 3600))
        assert rotation("next\n", handle) is False  # same UTC day
        clock[0] = day + 86400 + 5  # the first line of the next day
        assert rotation("next\n", handle) is True


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


def _pre_upgrade_rows(backend, now) -> list[int]:
    """Rows stored verbatim, as azamrecon did before secrets were kept out of storage."""
    ids = []
    with transaction(backend.engine) as session:
        for n, body in enumerate(
            [
                callback(password=CURRENT, transid="OLD1"),
                callback(password="", transid="OLD2"),
                b"password=" + CURRENT.encode(),
            ]
        ):
            fields = extract_fields(body)
            ids.append(
                append_event(
                    session,
                    event_row(
                        source="callback", body=body, received_at=now + timedelta(seconds=n), auth="n/a", fields=fields
                    ),
                )
            )
    return ids


def test_scrub_rewrites_old_rows_only_when_asked_by_name_and_records_it(backend, now):
    ids = _pre_upgrade_rows(backend, now)
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
    _assert_append_only(backend, ids[0])


def _assert_append_only(backend, event_id: int) -> None:
    for statement in (
        f"UPDATE payment_events SET body = body WHERE id = {event_id}",
        f"UPDATE payment_events SET msisdn = 'x' WHERE id = {event_id}",
        f"DELETE FROM payment_events WHERE id = {event_id}",
    ):
        with pytest.raises(StoreError, match="append-only"):
            with transaction(backend.engine) as session:
                session.execute(text(statement))


def test_the_guard_lifts_for_body_and_msisdn_only_and_never_for_deletes(backend, now):
    [event_id, *_] = _pre_upgrade_rows(backend, now)
    key = key_of()
    _assert_append_only(backend, event_id)
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
    _assert_append_only(backend, event_id)
    with pytest.raises(ConfigError, match="not the key this database was hashed with"):
        with transaction(backend.engine, immediate=True) as session:
            with sanctioned_rewrite(session, key_of(2)):
                pass


@pytest.mark.mysql
def test_on_mariadb_another_session_stays_refused_while_a_rewrite_is_open(mysql_backend, now):
    mine, theirs, _ = _pre_upgrade_rows(mysql_backend, now)
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


# --- retention ----------------------------------------------------------------------------------

DONOR = "0758285812"  # stored as 255758285812
WEAK_DONOR = "255655123456"
# the 9 digits in every written form of each number: donors', the old log's, and two in bodies with no fields to go by
NATIONAL = ("758285812", "655123456", "789123456", "688123456", "788999111", "699111222")


def _retention_scene(backend, log_dir: Path):
    """Donations, callbacks through the receiver (one resolved only by a weak key, whose msisdn must agree),
    the old view's log imported, everything folded; logs written."""
    settings = {"webhook.password": CURRENT, "logging.dir": str(log_dir)}
    config = backend.config(**settings)
    add_donation(backend.engine, "RHCI-DN-999-20251219120000", donation_id=999, msisdn="255789123456")
    add_donation(
        backend.engine,
        "RHCI-DN-42-20260114093012",
        donation_id=42,
        amount="25000",
        msisdn="255758285812",
        provider="Halopesa",
    )
    add_donation(backend.engine, None, donation_id=45, amount="10000", msisdn=WEAK_DONOR, provider="Tigo")
    live = json.loads(fixture_bytes("callback_live_shape_success.json"))
    live.update(msisdn=DONOR, user="+255758285812", password=CURRENT)
    weak = json.loads(fixture_bytes("callback_failed_spelling.json"))
    weak.update(
        utilityref=None,
        externalreference=None,
        reference=None,
        transid=None,
        transactionstatus="success",
        password=CURRENT,
    )
    with logging_to(config), TestClient(create_app(config)) as client:
        answers = [
            client.post(CALLBACK_PATH, content=json.dumps(body).encode(), headers=JSON).status_code
            for body in (live, weak, json.loads(callback(password=CURRENT)))
        ]
        answers.append(
            client.post(
                CALLBACK_PATH,
                content=b"msisdn=0788999111&password=" + CURRENT.encode(),
                headers={"content-type": "text/plain"},
            ).status_code
        )
        answers.append(
            client.post(
                CALLBACK_PATH, content=b'{"msisdn": "+255 699111222", "password": "%s"' % CURRENT.encode(), headers=JSON
            ).status_code
        )
        assert answers == [200, 200, 200, 415, 400]
        ingest_file(backend.engine, config, LEGACY_LOG, datetime.now(UTC))
        run_fold(backend.engine, config, datetime.now(UTC))
    return config


def _money(backend) -> list:
    return backend.rows("SELECT id, status, completed_at FROM donations ORDER BY id") + backend.rows(
        "SELECT donation_id, amount FROM funding_credits ORDER BY donation_id"
    )


def test_after_the_window_no_full_number_is_left_and_a_rebuild_agrees(backend, log_dir):
    config = _retention_scene(backend, log_dir)
    statuses = dict(backend.rows("SELECT id, status FROM donations"))
    assert (
        statuses[42] == "COMPLETED" and statuses[45] == "COMPLETED"
    )  # 45 by its donation_id hint, the msisdn agreeing
    money = _money(backend)
    everything = stored_text(backend) + files_text(log_dir)
    assert all(national in everything for national in NATIONAL)
    rotated = log_dir / "payments.2025-01-01_00-00-00_000000.log"
    rotated.write_text(
        "2025-01-01 00:00:00.000 | INFO | receiver | Received Azam Pay callback: {'msisdn': '255758285812'}\n"
    )

    now = datetime.now(UTC)
    early = retain(backend.engine, config, now)  # nothing is older than the window yet
    assert early["bodies_rewritten"] == 0 and early["log_files_deleted"] == 0
    assert all(national in stored_text(backend) for national in NATIONAL[:3])

    later = now + timedelta(days=config.privacy.msisdn_retention_days + 1)
    counts = retain(backend.engine, config, later)
    assert (
        counts["bodies_rewritten"] >= 3
        and counts["msisdn_donations_rewritten"] >= 3
        and counts["log_files_deleted"] == 1
    )
    everything = stored_text(backend) + files_text(log_dir)
    for national in NATIONAL:
        assert national not in everything
    assert not rotated.exists()
    # equal numbers stayed equal: the weak key still resolves, and so does everything else
    key = load_key(config.privacy.key_file)
    assert backend.scalar("SELECT msisdn FROM donations WHERE id = 45") == retained_msisdn(key, WEAK_DONOR)
    assert {
        row.msisdn for row in event_rows(backend.engine) if row.utilityref is None and row.donation_hint == "45"
    } == {retained_msisdn(key, WEAK_DONOR)}
    body = json.loads(
        next(row.body for row in event_rows(backend.engine) if row.utilityref == "RHCI-DN-42-20260114093012")
    )
    assert body["msisdn"] == body["user"] == retained_msisdn(key, "255758285812")
    assert HASHED.fullmatch(body["msisdn"]) and body["password"].startswith("redacted:hmac-sha256:")
    assert check(backend.engine, config).differences == []
    assert _money(backend) == money
    assert backend.scalar("SELECT COUNT(*) FROM privacy_rewrites WHERE operation = 'retain-msisdn'") == 1
    again = retain(backend.engine, config, later)  # idempotent
    assert again["bodies_rewritten"] == 0 and again["numbers_retired"] == 0 and again["bodies_scanned"] == 0
    assert backend.scalar("SELECT COUNT(*) FROM privacy_rewrites") == 1


def test_a_number_still_in_use_is_kept_everywhere_until_it_is_not(backend, now):
    config = backend.config()
    add_donation(backend.engine, "RHCI-DN-1-20251219120000", donation_id=1, msisdn="255758285812")
    young_at = now + timedelta(days=300)
    with transaction(backend.engine) as session:
        for at, transid in ((now, "T-OLD"), (young_at, "T-YOUNG")):
            body = callback(msisdn="255758285812", transid=transid, reference=transid)
            append_event(
                session,
                event_row(source="callback", body=body, received_at=at, auth="n/a", fields=extract_fields(body)),
            )
    at = now + timedelta(days=config.privacy.msisdn_retention_days + 1)  # the first event is old, the second not
    counts = retain(backend.engine, config, at)
    assert counts["numbers_retired"] == 0 and counts["numbers_kept_in_use"] == 1
    assert [row.msisdn for row in event_rows(backend.engine)] == ["255758285812", "255758285812"]  # typed: both kept
    assert "758285812" not in bytes(event_rows(backend.engine)[0].body).decode()  # the old body lost it all the same
    assert backend.scalar("SELECT msisdn FROM donations") == "255758285812"
    counts = retain(backend.engine, config, young_at + timedelta(days=config.privacy.msisdn_retention_days + 1))
    assert counts["numbers_retired"] == 1
    hashed = retained_msisdn(load_key(config.privacy.key_file), "255758285812")
    assert [row.msisdn for row in event_rows(backend.engine)] == [hashed, hashed]
    assert backend.scalar("SELECT msisdn FROM donations") == hashed


def test_retain_cli_dry_run_and_the_scheduled_job(backend, now):
    add_donation(backend.engine, "RHCI-DN-1-20251219120000", donation_id=1, msisdn="255758285812")
    settings = {
        "database.url": backend.url,
        "privacy.key_file": str(backend.tmp_path / "azamrecon.key"),
        "logging.dir": str(backend.tmp_path / "logs"),
        "receiver.spool_dir": str(backend.tmp_path / "spool"),
    }
    cli_config = str(write_config(backend.tmp_path / "retain.yaml", settings))
    runner = CliRunner()
    later = (datetime.now(UTC) + timedelta(days=500)).isoformat()
    dry = runner.invoke(
        cli,
        ["privacy", "retain", "--now", later, "--dry-run", "--format", "json", "--config", cli_config],
        env={"DATABASE_URL": None},
    )
    assert dry.exit_code == 0, dry.output
    assert (
        json.loads(dry.stdout)["numbers_retired"] == 1
        and backend.scalar("SELECT msisdn FROM donations") == "255758285812"
    )
    done = runner.invoke(cli, ["privacy", "retain", "--now", later, "--config", cli_config], env={"DATABASE_URL": None})
    assert done.exit_code == 0 and "numbers_retired=1" in done.output
    assert HASHED.fullmatch(backend.scalar("SELECT msisdn FROM donations"))
    assert backend.scalar("SELECT outcome FROM job_runs WHERE job = 'privacy-retain'") == "ok"
    bad = runner.invoke(
        cli, ["privacy", "retain", "--now", "someday", "--config", cli_config], env={"DATABASE_URL": None}
    )
    assert bad.exit_code == 2 and bad.output.count("\n") == 1

    from jobs.scheduler import build_scheduler

    scheduler = build_scheduler(backend.engine, load_config(None, environ={}, overrides=settings))
    [job] = [job for job in scheduler.get_jobs() if job.id == "privacy_retain"]
    assert "cron" in str(job.trigger)


def test_a_donor_sees_and_erases_their_data(backend, now):
    config = backend.config()
    add_donation(
        backend.engine,
        "RHCI-DN-42-20260114093012",
        donation_id=42,
        amount="25000",
        msisdn="255758285812",
        provider="Halopesa",
    )
    other = add_donation(
        backend.engine,
        "RHCI-DN-43-20260114093012",
        donation_id=43,
        amount="25000",
        msisdn="255655123456",
        provider="Halopesa",
    )
    live = json.loads(fixture_bytes("callback_live_shape_success.json"))
    live.update(msisdn="0758285812", user="0758285812")
    with transaction(backend.engine) as session:
        append_event(
            session,
            event_row(
                source="callback",
                body=json.dumps(live).encode(),
                received_at=now,
                auth="n/a",
                fields=extract_fields(json.dumps(live).encode()),
            ),
        )
    load_key(config.privacy.key_file)  # `azamrecon init` made it
    found = find_donor(backend.engine, config, "+255 758 285 812")
    assert [row["id"] for row in found["donations"]] == [42] and len(found["events"]) == 1
    with pytest.raises(InputError, match="still open"):
        erase_donor(backend.engine, config, "0758285812", now)
    run_fold(backend.engine, config, now)
    assert backend.scalar("SELECT status FROM donations WHERE id = 42") == "COMPLETED"
    counts = erase_donor(backend.engine, config, "0758285812", now)
    assert (
        counts["msisdn_events_rewritten"] == 1
        and counts["msisdn_donations_rewritten"] == 1
        and counts["bodies_rewritten"] == 1
    )
    assert "758285812" not in stored_text(backend)
    assert backend.scalar(f"SELECT msisdn FROM donations WHERE id = {other}") == "255655123456"  # nobody else's
    again = find_donor(backend.engine, config, "0758285812")  # still found, by the number's hash
    assert [row["id"] for row in again["donations"]] == [42] and len(again["events"]) == 1
    assert check(backend.engine, config).differences == []
    with pytest.raises(InputError, match="not a Tanzanian mobile number"):
        find_donor(backend.engine, config, "12345")
    Path(config.privacy.key_file).write_text(bytes(range(32)).hex() + "\n")  # a key file replaced by another
    with pytest.raises(ConfigError, match="not the key this database was hashed with"):
        find_donor(backend.engine, config, "0758285812")


def test_sweep_keeps_recent_files_and_narrows_their_mode(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    recent, old_rotated, old_live, other = (
        logs / "app.log",
        logs / "errors.2024-01-01_00-00-00_000000.log",
        logs / "errors.log",
        logs / "notes.txt",
    )
    for path in (recent, old_rotated, old_live, other):
        path.write_text("255758285812\n")
        path.chmod(0o644)
    past = datetime(2024, 1, 2, tzinfo=UTC).timestamp()
    for path in (old_rotated, old_live, other):
        os.utime(path, (past, past))
    counts = sweep_logs(logs, datetime(2025, 1, 1, tzinfo=UTC))
    assert counts == {"log_files_deleted": 1, "log_files_emptied": 1}
    assert not old_rotated.exists() and old_live.read_text() == "" and other.exists() and recent.read_text()
    assert (
        stat.S_IMODE(recent.stat().st_mode) == 0o640 and stat.S_IMODE(other.stat().st_mode) == 0o644
    )  # not ours: left alone


# --- migration 0004 on a database that has data --------------------------------------------------


def _to_revision(engine, revision: str) -> None:
    from alembic import command

    from pipeline.schema import alembic_config

    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def test_migration_0004_keeps_credited_donations_and_widens_their_number(backend, now):
    from pipeline.schema import current_revision, schema_differences, upgrade

    _to_revision(backend.engine, "0003")
    try:
        assert current_revision(backend.engine) == "0003"
        with transaction(backend.engine) as session:
            session.execute(
                text(
                    "INSERT INTO patients (id, name, funding_required, funding_received, status, created_at) "
                    "VALUES (1, 'Amina', 100000, 1000, 'FUNDING', :at)"
                ),
                {"at": now.replace(tzinfo=None)},
            )
        add_donation(backend.engine, "RHCI-DN-1-x", donation_id=1, msisdn="255758285812")
        with transaction(backend.engine) as session:
            session.execute(
                text(
                    "INSERT INTO funding_credits (donation_id, patient_id, amount, event_id, credited_at) VALUES (1, 1, 1000, 1, :at)"
                ),
                {"at": now.replace(tzinfo=None)},
            )
        with pytest.raises(StoreError, match="append-only"):  # 0003's trigger: no update at all
            _pre_upgrade_rows(backend, now)
            with transaction(backend.engine) as session:
                session.execute(text("UPDATE payment_events SET msisdn = 'x'"))
    finally:
        upgrade(backend.engine)
    assert current_revision(backend.engine) == "0004" and schema_differences(backend.engine) == []
    hashed = retained_msisdn(key_of(), "255758285812")
    with transaction(backend.engine) as session:
        session.execute(text("UPDATE donations SET msisdn = :m WHERE id = 1"), {"m": hashed})
    assert backend.scalar("SELECT msisdn FROM donations WHERE id = 1") == hashed
    assert backend.scalar("SELECT COUNT(*) FROM funding_credits") == 1
    assert backend.scalar("SELECT COUNT(*) FROM privacy_control WHERE id = 1 AND rewrite_allowed = 0") == 1
    if backend.name == "sqlite":
        assert backend.scalar("PRAGMA integrity_check") == "ok"
    _assert_append_only(backend, backend.scalar("SELECT MIN(id) FROM payment_events"))


def test_during_a_rotation_both_passwords_are_always_compared_in_constant_time(monkeypatch):
    import hmac

    import pipeline.auth as auth_module

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(auth_module.hmac, "compare_digest", lambda a, b: calls.append(b) or real(a, b))
    rotating = Authenticator(password=CURRENT, previous_password=PREVIOUS)
    for candidate in (CURRENT, PREVIOUS, WRONG):
        rotating.check(extract_fields(callback(password=candidate)), b"")
    assert calls == [CURRENT.encode(), PREVIOUS.encode()] * 3  # the current match does not skip the second
