"""The scheduler daemon, for real: subprocesses against the sandbox, bounded in time.

- a callback reaches COMPLETED within 2 s with the default settings;
- SIGTERM lets the daemon finish and exit cleanly;
- two daemons on one database do no double work (each stuck donation is asked about once).
"""

from __future__ import annotations

import contextlib
import os
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
def scheduler_process(config_path: Path, name: str = "scheduler"):
    out = open(config_path.parent / f"{name}.out", "wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
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
            latencies = []
            with AzamPayClient(config.azampay, backoff_factor=0) as client:
                for _ in range(3):
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
            assert max(latencies) <= 2.0, latencies
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
