"""Restore from backup without losing callbacks (docs/deploy.md, "Backup and restore"), step by step as the
guide says: back up, take traffic through a real `serve`, restore, `events ingest` the payments.log lines
written since the backup began, `events ingest-spool`, fold, `rebuild --check`.

SQLite is backed up with sqlite3's backup API; MariaDB with mysqldump --single-transaction when it is
installed, else by copying the tables with SQL into a second database.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from jobs.cli import cli
from jobs.fold import run_fold
from jobs.runs import utcnow
from tests.builders import add_donation, add_patient, callback_body
from tests.conftest import TABLES
from tests.servers import ServerProcess, config_settings, event_rows, write_config


def lines_since(log_dir: Path, since: str) -> str:
    """The guide's awk filter: every line of payments.log (rotated files first) whose stamp, to the
    millisecond, is not before `since` (the backup's start, in logging.timezone)."""
    files = sorted(log_dir.glob("payments*.log"), key=lambda p: (p.name == "payments.log", p.stat().st_mtime))
    return "".join(line for path in files for line in path.read_text().splitlines(keepends=True) if line[:23] >= since)


class SqliteBackup:
    def __init__(self, backend):
        self.path = Path(backend.engine.url.database)
        self.copy = backend.tmp_path / "backup.db"

    def take(self) -> None:
        with sqlite3.connect(self.path) as source, sqlite3.connect(self.copy) as target:
            source.backup(target)

    def restore(self) -> None:
        with sqlite3.connect(self.copy) as source, sqlite3.connect(self.path) as target:
            source.backup(target)


class MysqlBackup:
    def __init__(self, backend):
        self.backend = backend
        self.url = backend.engine.url
        self.dump = backend.tmp_path / "backup.sql"
        self.tool = shutil.which("mariadb-dump") or shutil.which("mysqldump")
        self.client = shutil.which("mariadb") or shutil.which("mysql")

    def _args(self) -> list[str]:
        args = ["-h", self.url.host or "127.0.0.1", "-P", str(self.url.port or 3306), "-u", self.url.username or "root"]
        return args + ([f"-p{self.url.password}"] if self.url.password else [])

    def take(self) -> None:
        if self.tool and self.client:
            with open(self.dump, "wb") as out:
                subprocess.run(
                    [self.tool, *self._args(), "--single-transaction", "--triggers", self.url.database],
                    stdout=out,
                    check=True,
                    timeout=60,
                )
        else:
            self._copy(self.url.database, self.url.database + "_backup", create=True)

    def restore(self) -> None:
        if self.tool and self.client:
            with open(self.dump, "rb") as dump:
                subprocess.run([self.client, *self._args(), self.url.database], stdin=dump, check=True, timeout=60)
        else:
            self._copy(self.url.database + "_backup", self.url.database, create=False)

    def _copy(self, source: str, target: str, create: bool) -> None:
        # TRUNCATE does not fire the log's append-only DELETE trigger
        admin = create_engine(self.url.set(database=None))
        with admin.begin() as connection:
            connection.execute(text("SET FOREIGN_KEY_CHECKS=0"))
            if create:
                connection.execute(text(f"DROP DATABASE IF EXISTS `{target}`"))
                connection.execute(text(f"CREATE DATABASE `{target}`"))
            for table in (*TABLES, "alembic_version"):
                if create:
                    connection.execute(text(f"CREATE TABLE `{target}`.`{table}` LIKE `{source}`.`{table}`"))
                else:
                    connection.execute(text(f"TRUNCATE TABLE `{target}`.`{table}`"))
                connection.execute(text(f"INSERT INTO `{target}`.`{table}` SELECT * FROM `{source}`.`{table}`"))
            connection.execute(text("SET FOREIGN_KEY_CHECKS=1"))
        admin.dispose()


def cli_run(config_path: Path, *args: str):
    return CliRunner().invoke(cli, [*args, "--config", str(config_path)], env={"DATABASE_URL": None})


def counts_of(output: str) -> dict[str, int]:
    [line] = [line for line in output.splitlines() if line.startswith("read=")]
    return {key: int(value) for key, value in (pair.split("=") for pair in line.split())}


def test_restore_then_ingest_since_the_backup_loses_nothing_and_adds_nothing(backend):
    config_path = write_config(backend.tmp_path / "config.yaml", config_settings(backend))
    config = backend.config()
    zone = ZoneInfo(config.logging.timezone)
    patient = add_patient(backend.engine, utcnow())
    donations = [add_donation(backend.engine, utcnow(), patient_id=patient)[1] for _ in range(6)]
    acknowledged: Counter = Counter()

    def deliver(client, reference, status="success", transaction="tx"):
        answer = client.post(
            server.callback_url,
            content=callback_body(reference, status=status, transaction_id=f"{transaction}-{reference}"),
            headers={"content-type": "application/json"},
        )
        assert answer.status_code in (200, 404), answer.text
        acknowledged[reference] += 1

    backup = SqliteBackup(backend) if backend.name == "sqlite" else MysqlBackup(backend)
    with ServerProcess(config_path, log_dir=backend.tmp_path / "server") as server, httpx.Client(timeout=10) as client:
        for reference in donations[:2]:
            deliver(client, reference)
        run_fold(backend.engine, config, utcnow())
        time.sleep(0.01)  # the stamps have millisecond resolution
        since = datetime.now(zone).strftime("%Y-%m-%d %H:%M:%S.%f")[:23]  # the backup script's `date`
        backup.take()
        time.sleep(0.01)
        deliver(client, donations[1])  # AzamPay retries a callback that was in the backup: a new delivery
        deliver(client, donations[2])
        deliver(client, donations[3], status="failed")
        deliver(client, donations[4])
        deliver(client, "RHCI-DN-999-20251219120000")  # unknown: 404, stored all the same
    run_fold(backend.engine, config, utcnow())
    expected_status = dict(backend.rows("SELECT external_reference, status FROM donations"))
    expected_funding = backend.scalar("SELECT funding_received FROM patients")
    assert Counter(expected_status.values()) == {"COMPLETED": 4, "FAILED": 1, "PENDING": 1}

    backend.engine.dispose()
    backup.restore()
    backend.engine.dispose()
    assert backend.scalar("SELECT COUNT(*) FROM payment_events") == 2  # the backup's

    recent = backend.tmp_path / "since-backup.log"
    recent.write_text(lines_since(backend.tmp_path / "logs", since))
    first = cli_run(config_path, "events", "ingest", str(recent))
    assert first.exit_code == 0, first.output
    assert counts_of(first.stdout)["imported"] == 5 and counts_of(first.stdout)["errors"] == 0
    again = cli_run(config_path, "events", "ingest", str(recent))
    assert again.exit_code == 0 and counts_of(again.stdout)["imported"] == 0, again.output
    assert counts_of(again.stdout)["duplicates"] == 5
    spool = cli_run(config_path, "events", "ingest-spool")
    assert spool.exit_code == 0, spool.output
    run_fold(backend.engine, config, utcnow())
    check = cli_run(config_path, "rebuild", "--check")
    assert check.exit_code == 0, check.output

    stored = Counter(json.loads(row.body)["utilityref"] for row in event_rows(backend.engine))
    assert stored == acknowledged  # every acknowledged delivery exactly once
    assert dict(backend.rows("SELECT external_reference, status FROM donations")) == expected_status
    assert backend.scalar("SELECT funding_received FROM patients") == expected_funding
