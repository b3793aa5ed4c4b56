"""A poll run against the real sandbox over loopback, on SQLite and MariaDB: bounded concurrency, the lease,
network and credential errors, the CLI, and a run at the benchmark's size."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import insert

from jobs.locks import acquire
from jobs.poll import LOCK_NAME, run_poll
from pipeline.azampay import AzamPayClient
from pipeline.db import transaction
from pipeline.errors import LockBusy, NotFound
from pipeline.models import JobLock
from sandbox.testing import running_sandbox
from tests.servers import config_settings, free_port, write_config
from tests.test_checkout import azampay_overrides, donation
from tests.test_poll import MINUTE, poll_events, seed, status_calls


@pytest.fixture
def sandbox():
    with running_sandbox() as handle:
        yield handle


@pytest.fixture
def setup(backend, sandbox):
    config = backend.config(**azampay_overrides(sandbox))
    with AzamPayClient(config.azampay, backoff_factor=0) as client:
        yield config, client


class CountingClient(AzamPayClient):
    """Counts status calls in flight at once; `gate` (when set) holds every call until it is opened."""

    def __init__(self, *args, gate: threading.Event | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._count_lock = threading.Lock()
        self.in_flight = self.max_in_flight = self.calls = 0
        self.gate = gate
        self.entered = threading.Event()

    def transaction_status(self, transaction_id, provider):
        with self._count_lock:
            self.in_flight += 1
            self.calls += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.entered.set()
        try:
            if self.gate is not None:
                assert self.gate.wait(10), "gate never opened"
            return super().transaction_status(transaction_id, provider)
        finally:
            with self._count_lock:
                self.in_flight -= 1


def test_concurrency_is_bounded(backend, sandbox, now):
    config = backend.config(**azampay_overrides(sandbox), **{"poll.concurrency": 4})
    seed(backend, sandbox, ["pending"] * 40, now)
    sandbox.set_latency(0.03)
    with CountingClient(config.azampay) as client:
        report = run_poll(backend.engine, config, client, now + 11 * MINUTE)
    assert report.checked == 40 and client.calls == 40
    assert 2 <= client.max_in_flight <= 4


def test_two_pollers_never_ask_twice(backend, sandbox, now):
    config = backend.config(**azampay_overrides(sandbox))
    made = seed(backend, sandbox, ["pending"] * 20, now)
    gate = threading.Event()
    outcome: dict = {}
    with CountingClient(config.azampay, gate=gate) as first_client, AzamPayClient(config.azampay) as second_client:

        def first() -> None:
            try:
                outcome["first"] = run_poll(backend.engine, config, first_client, now + 11 * MINUTE)
            except Exception as exc:  # surfaced below
                outcome["first"] = exc

        thread = threading.Thread(target=first, daemon=True)
        thread.start()
        try:
            assert first_client.entered.wait(10), "first poller never started asking"
            with pytest.raises(LockBusy, match="poll: another worker holds the lock"):
                run_poll(backend.engine, config, second_client, now + 11 * MINUTE)
        finally:
            gate.set()
            thread.join(20)
    assert not thread.is_alive()
    assert outcome["first"].checked == 20
    assert set(status_calls(sandbox).values()) == {1}
    assert len(poll_events(backend)) == 20 == len(made)
    assert backend.scalar("SELECT holder FROM job_locks WHERE name = 'poll'") is None  # released
    # with the lease free again, the next run finds everything in backoff: still nobody asked twice
    with AzamPayClient(config.azampay) as client:
        assert run_poll(backend.engine, config, client, now + 12 * MINUTE).skipped_backoff == 20
    assert set(status_calls(sandbox).values()) == {1}


def test_a_stale_lease_is_taken_over_a_live_one_is_not(backend, sandbox, setup, now):
    config, client = setup
    with transaction(backend.engine) as session:
        session.execute(
            insert(JobLock).values(name=LOCK_NAME, holder="crashed-host:1:abc", acquired_at=now - timedelta(minutes=3))
        )
    with pytest.raises(LockBusy, match="crashed-host"):
        run_poll(backend.engine, config, client, now)
    assert run_poll(backend.engine, config, client, now + timedelta(minutes=6)).candidates == 0  # lease (5 min) expired
    acquire(backend.engine, LOCK_NAME, "me", now, 300)
    with pytest.raises(LockBusy):
        acquire(backend.engine, LOCK_NAME, "someone-else", now + MINUTE, 300)


def test_network_errors_append_nothing_and_are_retried(backend, sandbox, setup, now):
    config, client = setup
    made = seed(backend, sandbox, ["no_callback"] * 3, now)
    sandbox.fail_next(1000, status=503)
    report = run_poll(backend.engine, config, client, now + 11 * MINUTE)
    sandbox.fail_next(0)
    assert (report.checked, report.errors, report.appended) == (0, 3, 0)
    assert "HTTP 503" in report.error_messages[0]
    assert poll_events(backend) == []
    retry = run_poll(backend.engine, config, client, now + 12 * MINUTE)  # not in backoff: nothing was answered
    assert (retry.checked, retry.success, retry.errors) == (3, 3, 0)

    # AzamPay unreachable altogether
    dead = backend.config(
        **azampay_overrides(
            sandbox,
            **{
                "azampay.checkout_url": f"http://127.0.0.1:{free_port()}",
                "azampay.auth_url": f"http://127.0.0.1:{free_port()}",
            },
        )
    )
    seed(backend, sandbox, ["no_callback"], now)
    with AzamPayClient(dead.azampay, backoff_factor=0) as unreachable:
        report = run_poll(backend.engine, dead, unreachable, now + 13 * MINUTE)
    assert (report.checked, report.errors) == (0, 1) and "connection failed" in report.error_messages[0]
    assert len(poll_events(backend)) == 3 and len(made) == 3


def test_refused_credentials_abort_the_run(backend, sandbox, now):
    config = backend.config(
        **azampay_overrides(sandbox, **{"azampay.client_secret": "wrong"}), **{"poll.concurrency": 2}
    )
    seed(backend, sandbox, ["success"] * 30, now)
    with AzamPayClient(config.azampay) as client:
        report = run_poll(backend.engine, config, client, now + 11 * MINUTE)
    assert report.aborted and "refused" in report.aborted and "wrong" not in report.aborted
    assert report.checked == 0 and 1 <= report.errors <= 4  # stopped after the first refusals, not 30
    assert poll_events(backend) == []


# --- the CLI --------------------------------------------------------------------------------------------------


def _cli(path, *args):
    from jobs.cli import cli

    return CliRunner().invoke(cli, [*args, "--config", str(path)], catch_exceptions=False)


def _runs(backend):
    return backend.rows("SELECT outcome, counts, error FROM job_runs WHERE job = 'poll' ORDER BY id")


def test_cli_poll_prints_counts_records_the_run_and_folds(backend, sandbox, now):
    path = write_config(backend.tmp_path / "cli.yaml", config_settings(backend, **azampay_overrides(sandbox)))
    from jobs.runs import utcnow

    old = utcnow() - timedelta(hours=1)  # the CLI runs on the real clock
    made = seed(backend, sandbox, ["no_callback", "failure", "pending"], old)

    sandbox.fail_next(1000, status=503)
    result = _cli(path, "poll", "--format", "json")
    sandbox.fail_next(0)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["checked"], data["errors"]) == (0, 3) and "HTTP 503" in data["first_error"]
    [run] = _runs(backend)
    assert run.outcome == "error" and json.loads(run.counts)["errors"] == 3
    assert poll_events(backend) == []

    result = _cli(path, "poll", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {
        k: data[k]
        for k in ("checked", "success", "failed", "pending", "unknown", "expired", "errors", "skipped_backoff")
    } == dict(checked=3, success=1, failed=1, pending=1, unknown=0, expired=0, errors=0, skipped_backoff=0)
    assert data["folded_events"] == 3
    assert [donation(backend, d).status for d, _ in made] == ["COMPLETED", "FAILED", "PENDING"]
    assert [r.outcome for r in _runs(backend)] == ["error", "ok"]

    result = _cli(path, "poll", "--no-fold")
    assert result.exit_code == 0 and "skipped_backoff" in result.output
    result = _cli(path, "poll", "--donation", "999")
    assert result.exit_code == NotFound.exit_code and "donation 999 not found" in result.stderr

    with transaction(backend.engine) as session:
        session.execute(
            JobLock.__table__.update().where(JobLock.name == LOCK_NAME).values(holder="other:1:x", acquired_at=utcnow())
        )
    result = _cli(path, "poll")
    assert result.exit_code == 0 and "poll skipped" in result.output
    assert _runs(backend)[-1].outcome == "skipped"


@pytest.mark.slow
def test_ten_thousand_stuck_donations_are_each_checked_once(backend, sandbox, now):
    """Correctness at the benchmark's size. The time is bench.poll's to measure: a timed assertion here
    failed on a slower host without saying anything about the code."""
    config = backend.config(**azampay_overrides(sandbox), **{"poll.concurrency": 8})
    outcomes = ["no_callback", "pending", "failure", "unknown_status"] * 2500
    seed(backend, sandbox, outcomes, now)
    with AzamPayClient(config.azampay) as client:
        started = time.monotonic()
        report = run_poll(backend.engine, config, client, now + 11 * MINUTE)
        elapsed = time.monotonic() - started
    assert (report.checked, report.success, report.pending, report.failed, report.unknown) == (
        10_000,
        2500,
        2500,
        2500,
        2500,
    )
    assert backend.scalar("SELECT COUNT(*) FROM payment_events WHERE source = 'poll'") == 10_000
    assert backend.scalar("SELECT COUNT(DISTINCT donation_id) FROM payment_events WHERE source = 'poll'") == 10_000
    print(f"run_poll: 10,000 donations in {elapsed:.1f}s (not asserted; see bench.poll)")
