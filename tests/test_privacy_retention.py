"""Retention of phone numbers and a donor's data (issue 17, docs/privacy.md), on a real SQLite file and on
real MariaDB: after the retention window (a controlled `now`), no full phone number is left in the database
or the log files, and `rebuild --check` is clean; a number still in use is kept; a donor sees and erases
their data; the log sweep.
"""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from loguru import logger
from starlette.testclient import TestClient

from jobs.cli import cli
from jobs.fold import run_fold
from jobs.ingest import ingest_file
from jobs.log_sweep import sweep_logs
from jobs.privacy import erase_donor, find_donor
from jobs.rebuild import check
from jobs.retain import retain
from pipeline.config import load_config
from pipeline.db import transaction
from pipeline.errors import ConfigError, InputError
from pipeline.events import extract_fields
from pipeline.privacy import load_key, retained_msisdn
from pipeline.store.events import append_event, event_row
from receiver.app import CALLBACK_PATH, create_app
from tests.conftest import fixture_bytes
from tests.privacy_helpers import (
    CURRENT,
    HASHED,
    JSON,
    LEGACY_LOG,
    callback,
    files_text,
    logging_to,
    stored_text,
)
from tests.servers import add_donation, event_rows, write_config


@pytest.fixture
def log_dir(tmp_path):
    yield tmp_path / "logs"
    logger.remove()


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
