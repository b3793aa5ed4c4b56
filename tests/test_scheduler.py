"""The scheduler daemon, for real: subprocesses against the sandbox, bounded in time.

- a callback reaches COMPLETED within 2 s with the default settings;
- SIGTERM lets the daemon finish and exit cleanly;
- two daemons on one database do no double work (each stuck donation is asked about once);
- with the database down, a fold failing every 0.5 s is logged once, then summarised, then its recovery.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from jobs.runs import utcnow
from pipeline.azampay import AzamPayClient
from pipeline.checkout import initiate_checkout
from pipeline.db import transaction
from pipeline.models import Donation
from sandbox.testing import running_sandbox
from tests.builders import add_patient
from tests.servers import REPO, ServerProcess, config_settings, write_config
from tests.test_checkout import azampay_overrides


@contextlib.contextmanager
def scheduler_process(config_path: Path, name: str = "scheduler", env: dict | None = None):
    out = open(config_path.parent / f"{name}.out", "wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    env.pop("AZAMRECON_CONFIG", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "scheduler", "--config", str(config_path)],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        out.close()


def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def status_of(engine, donation_id: int) -> str:
    with transaction(engine) as session:
        return session.get(Donation, donation_id).status


def test_a_callback_reaches_completed_within_two_seconds_and_sigterm_stops_cleanly(backend, tmp_path):
    with running_sandbox() as sandbox:
        settings = config_settings(backend, **azampay_overrides(sandbox))
        config_path = write_config(tmp_path / "config.yaml", settings)
        config = backend.config(**azampay_overrides(sandbox))
        with ServerProcess(config_path, log_dir=tmp_path / "serve") as server, scheduler_process(config_path) as daemon:
            sandbox.set_callback_url(server.callback_url)
            patient = add_patient(backend.engine, utcnow())
            # the latency of a running daemon, not of its start (a loaded machine takes seconds to import it)
            app_log = tmp_path / "logs" / "app.log"
            assert wait_until(lambda: "scheduler started" in _read(app_log), 15)
            latencies = []
            with AzamPayClient(config.azampay, backoff_factor=0) as client:
                for _ in range(4):
                    result = initiate_checkout(
                        backend.engine,
                        config,
                        client,
                        patient_id=patient,
                        amount=Decimal("5000"),
                        msisdn="0758285812",
                        provider="Mpesa",
                        now=utcnow(),
                    )
                    started = time.monotonic()
                    assert wait_until(lambda r=result: status_of(backend.engine, r.donation_id) == "COMPLETED", 10), (
                        tmp_path / "scheduler.out"
                    ).read_text()[-2000:]
                    latencies.append(time.monotonic() - started)
            # the first callback also pays each process's first use (lazy imports, connections): a warm-up,
            # bounded by the 10 s wait above; the 2 s target is a running system's
            assert max(latencies[1:]) <= 2.0, latencies
            os.killpg(daemon.pid, signal.SIGTERM)
            assert daemon.wait(15) == 0
    output = (tmp_path / "scheduler.out").read_text()
    assert "scheduler stopped" in (tmp_path / "logs" / "app.log").read_text()
    assert "Traceback" not in output
    assert backend.scalar("SELECT COUNT(*) FROM job_runs WHERE job='fold' AND outcome='ok'") >= 1


def test_two_daemons_ask_about_each_stuck_donation_once(backend, tmp_path):
    with running_sandbox(outcomes={"255758285812": "no_callback"}) as sandbox:
        overrides = azampay_overrides(sandbox) | {"poll.threshold_minutes": 0, "scheduler.poll_interval_seconds": 1}
        config_path = write_config(tmp_path / "config.yaml", config_settings(backend, **overrides))
        config = backend.config(**overrides)
        patient = add_patient(backend.engine, utcnow())
        with AzamPayClient(config.azampay, backoff_factor=0) as client:
            donations = [
                initiate_checkout(
                    backend.engine,
                    config,
                    client,
                    patient_id=patient,
                    amount=Decimal("5000"),
                    msisdn="0758285812",
                    provider="Mpesa",
                    now=utcnow(),
                ).donation_id
                for _ in range(6)
            ]
        with scheduler_process(config_path, "a") as first, scheduler_process(config_path, "b") as second:
            done = wait_until(lambda: all(status_of(backend.engine, d) == "COMPLETED" for d in donations), 30, step=0.2)
            time.sleep(2.5)  # two more poll rounds for both daemons: nothing may be asked twice
            for daemon in (first, second):
                os.killpg(daemon.pid, signal.SIGTERM)
                assert daemon.wait(15) == 0
    assert done, (tmp_path / "a.out").read_text()[-2000:]
    polls = dict(
        backend.rows("SELECT donation_id, COUNT(*) FROM payment_events WHERE source='poll' GROUP BY donation_id")
    )
    assert polls == {d: 1 for d in donations}
    assert backend.scalar("SELECT COUNT(*) FROM funding_credits") == 6
    assert backend.scalar("SELECT SUM(events_applied) FROM fold_checkpoints") == backend.scalar(
        "SELECT COUNT(*) FROM payment_events"
    )


def test_scheduled_fold_records_work_and_failures_but_not_idle_runs(backend, now):
    from jobs.scheduler import Jobs
    from pipeline.errors import InvariantViolation
    from tests.builders import add_donation, append, callback_body

    patient = add_patient(backend.engine, now)
    _, reference = add_donation(backend.engine, now, patient)
    jobs = Jobs(backend.engine, backend.config(), clock=lambda: now)
    jobs.fold()  # nothing to fold: no row
    assert backend.scalar("SELECT COUNT(*) FROM job_runs") == 0
    append(backend.engine, callback_body(reference), now)
    jobs.fold()
    assert backend.rows("SELECT job, outcome FROM job_runs") == [("fold", "ok")]
    with backend.engine.begin() as connection:  # a derived total that no longer matches its credits
        connection.exec_driver_sql("UPDATE patients SET funding_received = 1")
    _, second = add_donation(backend.engine, now, patient)
    append(backend.engine, callback_body(second, transaction_id="tx-2"), now)
    with pytest.raises(InvariantViolation):
        jobs.fold()
    outcome, error = backend.rows("SELECT outcome, error FROM job_runs ORDER BY id DESC")[0]
    assert outcome == "error" and "invariant" in error


@contextlib.contextmanager
def database_down(backend, settings: dict):
    """Yield (settings for the daemon, outage): `with outage():` makes the database unusable to the daemon.
    MariaDB: the daemon connects through a loopback TcpProxy, stopped for the outage (connections refused).
    SQLite: the test holds the write lock (BEGIN IMMEDIATE) and the daemon's busy timeout is short."""
    if backend.name == "mysql":
        from urllib.parse import urlsplit

        from tests.reliability.helpers import with_port
        from tests.tcp_proxy import TcpProxy

        with TcpProxy("127.0.0.1", urlsplit(backend.url).port or 3306) as proxy:

            @contextlib.contextmanager
            def outage():
                proxy.stop()
                try:
                    yield "database unreachable"
                finally:
                    proxy.start()

            yield {**settings, "database.url": with_port(backend.url, proxy.port)}, outage
        return
    import sqlite3

    @contextlib.contextmanager
    def outage():
        holder = sqlite3.connect(backend.url.removeprefix("sqlite:///"), isolation_level=None, timeout=5)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield "lock timeout"
        finally:
            holder.execute("ROLLBACK")
            holder.close()

    yield {**settings, "database.busy_timeout_ms": 200}, outage


def test_a_database_outage_is_one_failure_line_then_summaries_then_recovered(backend, tmp_path):
    """The scheduler used to write two "Error processing Azam Pay callback: fold failed" lines every
    0.5 s with the database down (39 in 20 s, with no callback at all)."""
    from tests.builders import add_donation, append, callback_body

    logs = tmp_path / "logs"
    with database_down(backend, config_settings(backend)) as (settings, outage):
        config_path = write_config(tmp_path / "config.yaml", settings)
        patient = add_patient(backend.engine, utcnow())
        donation, reference = add_donation(backend.engine, utcnow(), patient)
        environment = {"AZAMRECON_FAILURE_SUMMARY_SECONDS": "2"}
        with scheduler_process(config_path, env=environment) as daemon:
            app_log = logs / "app.log"
            assert wait_until(lambda: app_log.exists() and "scheduler started" in app_log.read_text(), 15)
            with outage() as reason:
                assert wait_until(lambda: "fold failed:" in _read(logs / "errors.log"), 10), _read(app_log)[-2000:]
                time.sleep(5)  # about ten more failed folds, and two or three summaries
            append(backend.engine, callback_body(reference), utcnow())
            folded = wait_until(lambda: status_of(backend.engine, donation) == "COMPLETED", 10)
            recovered = wait_until(lambda: "fold recovered after" in _read(app_log), 5)
            os.killpg(daemon.pid, signal.SIGTERM)
            assert daemon.wait(15) == 0
    errors = _messages(logs / "errors.log")
    assert folded and recovered, _read(app_log)[-3000:]
    first = [line for line in errors if line.startswith("fold failed:")]
    summaries = [line for line in errors if re.fullmatch(rf"fold failed (\d+ times|once) in \d+ s: {reason}", line)]
    assert len(first) == 1 and first[0].startswith(f"fold failed: {reason}"), errors
    assert 1 <= len(summaries) <= 4 and len(first) + len(summaries) == len(errors), errors
    (recovery,) = [line for line in _messages(app_log) if line.startswith("fold recovered after")]
    told = 1 + sum(int(re.search(r"failed (\d+) times", line)[1]) if "times" in line else 1 for line in summaries)
    assert told <= int(re.match(r"fold recovered after (\d+) failures", recovery)[1]) <= told + 10, (recovery, errors)
    payments_log = _messages(logs / "payments.log")  # beside the payment lines whose absence they explain
    assert first[0] in payments_log and recovery in payments_log
    assert f"✅ Donation {donation} completed successfully" in payments_log
    for path in logs.glob("*.log"):
        assert "Error processing Azam Pay callback" not in path.read_text(), path.name
    assert "Traceback" not in (tmp_path / "scheduler.out").read_text()


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def _messages(path: Path) -> list[str]:
    return [line.split(" | ", 3)[-1] for line in _read(path).splitlines()]


def test_every_scheduled_job_failure_is_rate_limited_and_only_the_fold_goes_to_payments_log():
    """The scheduler's failure reporting over a fake clock, for each job: one line, summaries, recovery; a
    bug's traceback once; a skipped run (another daemon holds the lease) is neither a failure nor a success."""
    from datetime import UTC, datetime, timedelta

    from loguru import logger

    from jobs.scheduler import FailureReporter, _guarded
    from pipeline.errors import AzamPayUnavailable, LockBusy, StoreUnavailable

    records = []
    sink = logger.add(lambda message: records.append(message.record), level="INFO", format="{message}", catch=False)
    clock = {"now": datetime(2026, 1, 14, tzinfo=UTC)}
    reporter = FailureReporter(clock=lambda: clock["now"], summary_seconds=60)
    outcome = {}

    def body(name):
        def run():
            if outcome.get(name):
                raise outcome[name]

        return run

    runs = {name: _guarded(name, body(name), reporter) for name in ("fold", "poll", "report", "privacy-retain")}
    try:
        outcome.update(fold=StoreUnavailable("database unreachable: refused"), poll=AzamPayUnavailable("timeout"))
        outcome["report"] = LockBusy("report: lease held by host-b")
        outcome["privacy-retain"] = KeyError("msisdn")
        for _ in range(150):  # 75 s of failures every 0.5 s
            for run in runs.values():
                run()
            clock["now"] += timedelta(seconds=0.5)
        outcome.clear()
        for run in runs.values():
            run()
            run()
    finally:
        logger.remove(sink)
    lines = [(r["level"].name, r["extra"].get("channel"), r["message"], r["exception"] is not None) for r in records]
    told = [line for line in lines if "skipped" not in line[2]]
    assert told == [
        ("ERROR", "payments", "fold failed: database unreachable: refused", False),
        ("ERROR", None, "poll failed: AzamPay unreachable: timeout", False),
        ("ERROR", None, "privacy-retain failed: KeyError: 'msisdn'", True),
        ("ERROR", "payments", "fold failed 120 times in 60 s: database unreachable", False),
        ("ERROR", None, "poll failed 120 times in 60 s: AzamPay unreachable", False),
        ("ERROR", None, "privacy-retain failed 120 times in 60 s: KeyError", False),
        ("WARNING", "payments", "fold recovered after 150 failures in 75 s", False),
        ("WARNING", None, "poll recovered after 150 failures in 75 s", False),
        ("WARNING", None, "privacy-retain recovered after 150 failures in 75 s", False),
    ]
    assert sum("report: skipped" in line[2] for line in lines) == 150  # LockBusy: info, as before
