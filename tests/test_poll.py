"""The poller against the real sandbox over loopback, on SQLite and MariaDB: selection, answers appended
(never donation state), backoff from the log, expiry, the lease, bounded concurrency, network errors."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner
from sqlalchemy import insert

from jobs.fold import run_fold
from jobs.locks import acquire
from jobs.poll import LOCK_NAME, backoff_delay, run_poll
from pipeline.azampay import AzamPayClient
from pipeline.db import transaction
from pipeline.errors import LockBusy, NotFound
from pipeline.models import Donation, JobLock
from sandbox.testing import running_sandbox
from tests.builders import add_patient, append, callback_body
from tests.servers import config_settings, free_port, write_config
from tests.test_checkout import anomaly_kinds, azampay_overrides, donation

MINUTE = timedelta(minutes=1)


@pytest.fixture
def sandbox():
    with running_sandbox() as handle:
        yield handle


def seed(
    backend, sandbox, outcomes, created_at, patient_id=None, amount="1000", transaction_ids=True
) -> list[tuple[int, str | None]]:
    """PENDING donations created at `created_at`, each with a sandbox transaction scripted by its outcome.
    Bulk inserts (explicit ids), so thousands are cheap. Returns [(donation_id, transaction_id)]."""
    first = (backend.scalar("SELECT MAX(id) FROM donations") or 0) + 1
    rows, made = [], []
    for offset, outcome in enumerate(outcomes):
        donation_id = first + offset
        reference = f"RHCI-DN-{donation_id}-{created_at:%Y%m%d%H%M%S}"
        transaction_id = (
            sandbox.seed_transaction(reference, "255758285812", "Mpesa", amount, outcome=outcome)
            if transaction_ids
            else None
        )
        rows.append(
            dict(
                id=donation_id,
                patient_id=patient_id,
                amount=Decimal(amount),
                currency="TZS",
                patient_amount=Decimal(amount),
                support_amount=Decimal("0"),
                charge_amount=Decimal(amount),
                charge_currency="TZS",
                msisdn="255758285812",
                provider="Mpesa",
                external_reference=reference,
                transaction_id=transaction_id,
                created_at=created_at,
                status="PENDING",
                events_applied=0,
                needs_check=False,
            )
        )
        made.append((donation_id, transaction_id))
    with transaction(backend.engine) as session:
        session.execute(insert(Donation), rows)
    return made


def poll_events(backend, donation_id=None):
    sql = "SELECT id, status, status_raw, transaction_ref, donation_id, auth, received_at, body FROM payment_events WHERE source = 'poll'"
    if donation_id is not None:
        return backend.rows(sql + " AND donation_id = :d ORDER BY id", d=donation_id)
    return backend.rows(sql + " ORDER BY id")


def status_calls(sandbox) -> dict[str, int]:
    return {t["transaction_id"]: t["status_calls"] for t in sandbox.transactions()}


@pytest.fixture
def setup(backend, sandbox):
    config = backend.config(**azampay_overrides(sandbox))
    with AzamPayClient(config.azampay, backoff_factor=0) as client:
        yield config, client


def test_stuck_donations_are_asked_and_answers_appended_without_touching_state(backend, sandbox, setup, now):
    config, client = setup
    patient = add_patient(backend.engine, now, required="100000")
    made = seed(
        backend,
        sandbox,
        ["success", "no_callback", "failure", "cancelled", "pending", "unknown_status"],
        now,
        patient_id=patient,
    )
    fresh = seed(backend, sandbox, ["success"], now + 5 * MINUTE)

    early = run_poll(backend.engine, config, client, now + 9 * MINUTE)
    assert early.candidates == 0 and early.checked == 0 and poll_events(backend) == []

    report = run_poll(backend.engine, config, client, now + 11 * MINUTE)
    assert (report.candidates, report.checked, report.success, report.failed, report.pending, report.unknown) == (
        6,
        6,
        2,
        2,
        1,
        1,
    )
    assert (report.errors, report.expired, report.appended, report.skipped_backoff) == (0, 0, 6, 0)
    events = poll_events(backend)
    by_donation = {event.donation_id: event for event in events}
    assert set(by_donation) == {donation_id for donation_id, _ in made}  # not the 6-minute-old one
    for donation_id, transaction_id in made:
        event = by_donation[donation_id]
        assert (event.transaction_ref, event.auth) == (transaction_id, "n/a")
        assert json.loads(bytes(event.body))["data"] == event.status_raw  # raw answer; status_raw = `data`
    statuses = [by_donation[donation_id].status for donation_id, _ in made]
    assert statuses == ["SUCCESS", "SUCCESS", "FAILED", "FAILED", "PENDING", "UNKNOWN"]
    assert by_donation[made[5][0]].status_raw == "Reversal queued."
    # the poller never writes donation state
    assert backend.scalar("SELECT COUNT(*) FROM donations WHERE status <> 'PENDING' OR last_event_id IS NOT NULL") == 0
    assert status_calls(sandbox)[fresh[0][1]] == 0

    run_fold(backend.engine, config, now + 12 * MINUTE)
    states = [donation(backend, donation_id) for donation_id, _ in made]
    assert [s.status for s in states] == ["COMPLETED", "COMPLETED", "FAILED", "FAILED", "PENDING", "PENDING"]
    assert states[5].needs_check and anomaly_kinds(backend, made[5][0]) == ["unknown_status"]
    assert backend.scalar("SELECT COUNT(*) FROM funding_credits") == 2


def test_backoff_schedule_from_the_log(backend, sandbox, setup, now):
    config, client = setup
    assert [backoff_delay(config, n) / MINUTE for n in range(0, 9)] == [0, 10, 20, 40, 80, 160, 240, 240, 240]
    [(donation_id, transaction_id)] = seed(backend, sandbox, ["pending"], now)
    at = now + 11 * MINUTE
    assert run_poll(backend.engine, config, client, at).checked == 1
    last = at
    for expected_gap in (10, 20, 40, 80, 160, 240, 240):
        gap = timedelta(minutes=expected_gap)
        early = run_poll(backend.engine, config, client, last + gap - MINUTE)
        assert (early.checked, early.skipped_backoff) == (0, 1), expected_gap
        due = run_poll(backend.engine, config, client, last + gap + timedelta(seconds=1))
        assert (due.checked, due.pending, due.skipped_backoff) == (1, 1, 0), expected_gap
        last = last + gap + timedelta(seconds=1)
    assert len(poll_events(backend, donation_id)) == 8
    assert status_calls(sandbox)[transaction_id] == 8
    run_fold(backend.engine, config, last)
    assert donation(backend, donation_id).status == "PENDING"


def test_needs_check_is_polled_at_any_age_and_again_after_a_new_doubt(backend, sandbox, now):
    config = backend.config(**azampay_overrides(sandbox), **{"webhook.password": "hook-secret"})
    [(donation_id, transaction_id)] = seed(backend, sandbox, ["success"], now)
    reference = f"RHCI-DN-{donation_id}-{now:%Y%m%d%H%M%S}"
    forged = callback_body(reference, transaction_id=transaction_id, amount="1000", password="wrong")
    append(backend.engine, forged, now + 30 * timedelta(seconds=1), auth="failed")
    run_fold(backend.engine, config, now + MINUTE)
    assert donation(backend, donation_id).needs_check and donation(backend, donation_id).status == "PENDING"
    with AzamPayClient(config.azampay) as client:
        first = run_poll(backend.engine, config, client, now + 2 * MINUTE)  # well before the 10-minute threshold
        assert (first.checked, first.success) == (1, 1)
        # nothing new since that answer: backoff applies even though needs_check stays set until the fold
        again = run_poll(backend.engine, config, client, now + 3 * MINUTE)
        assert (again.checked, again.skipped_backoff) == (0, 1)
        run_fold(backend.engine, config, now + 3 * MINUTE)
        assert donation(backend, donation_id).status == "COMPLETED"
        assert run_poll(backend.engine, config, client, now + 4 * MINUTE).candidates == 0  # no longer PENDING

    # a second donation: a new untrusted callback after a poll is a fresh doubt, asked about at once
    [(other, other_tx)] = seed(backend, sandbox, ["pending"], now)
    other_ref = f"RHCI-DN-{other}-{now:%Y%m%d%H%M%S}"
    append(
        backend.engine,
        callback_body(other_ref, transaction_id=other_tx, amount="1000", password="x"),
        now + MINUTE,
        auth="failed",
    )
    run_fold(backend.engine, config, now + MINUTE)
    with AzamPayClient(config.azampay) as client:
        assert run_poll(backend.engine, config, client, now + 2 * MINUTE).checked == 1
        run_fold(backend.engine, config, now + 2 * MINUTE)
        assert run_poll(backend.engine, config, client, now + 3 * MINUTE).skipped_backoff == 1
        append(
            backend.engine,
            callback_body(other_ref, transaction_id=other_tx, amount="1000", password="y"),
            now + 4 * MINUTE,
            auth="failed",
        )
        run_fold(backend.engine, config, now + 4 * MINUTE)
        assert run_poll(backend.engine, config, client, now + 5 * MINUTE).checked == 1
    assert status_calls(sandbox)[other_tx] == 2


def test_expiry_after_max_age_then_late_success(backend, sandbox, setup, now):
    config, client = setup
    patient = add_patient(backend.engine, now, required="5000")
    [(donation_id, transaction_id), (settled, _)] = seed(
        backend, sandbox, ["pending", "failure"], now, patient_id=patient
    )
    [(no_tx, _)] = seed(backend, sandbox, ["pending"], now, transaction_ids=False)

    report = run_poll(backend.engine, config, client, now + 11 * MINUTE)
    assert (report.checked, report.no_transaction_id) == (2, 1)
    run_fold(backend.engine, config, now + 12 * MINUTE)
    assert donation(backend, settled).status == "FAILED"

    later = now + timedelta(hours=25)
    report = run_poll(backend.engine, config, client, later)  # a last question, then the expiry
    assert (report.checked, report.pending, report.expired) == (1, 1, 2)
    assert [e.status for e in poll_events(backend, donation_id)] == ["PENDING", "PENDING", "EXPIRED"]
    [expiry] = poll_events(backend, no_tx)
    assert expiry.status == "EXPIRED" and json.loads(bytes(expiry.body))["reason"].startswith("no definite answer 24 h")
    run_fold(backend.engine, config, later)
    assert donation(backend, donation_id).status == "EXPIRED" and donation(backend, no_tx).status == "EXPIRED"
    assert run_poll(backend.engine, config, client, later + timedelta(hours=1)).candidates == 0

    # AzamPay settles it after all: an explicit check of a non-PENDING donation still asks and appends
    sandbox.set_status_text(transaction_id, "Transaction successful.")
    report = run_poll(backend.engine, config, client, later + timedelta(hours=2), donation_id=donation_id)
    assert (report.checked, report.success, report.expired) == (1, 1, 0)
    run_fold(backend.engine, config, later + timedelta(hours=2))
    assert donation(backend, donation_id).status == "COMPLETED"
    assert "late_success" in anomaly_kinds(backend, donation_id)
    assert backend.scalar("SELECT COUNT(*) FROM funding_credits WHERE donation_id = :d", d=donation_id) == 1


def test_definite_last_answer_is_not_expired(backend, sandbox, setup, now):
    config, client = setup
    [(donation_id, _)] = seed(backend, sandbox, ["no_callback"], now)
    report = run_poll(backend.engine, config, client, now + timedelta(hours=30))
    assert (report.success, report.expired) == (1, 0)
    run_fold(backend.engine, config, now + timedelta(hours=30))
    assert donation(backend, donation_id).status == "COMPLETED"


def test_single_donation_check_ignores_threshold_and_backoff(backend, sandbox, setup, now):
    config, client = setup
    [(donation_id, transaction_id)] = seed(backend, sandbox, ["pending"], now)
    for minutes in (1, 2):
        report = run_poll(backend.engine, config, client, now + minutes * MINUTE, donation_id=donation_id)
        assert (report.checked, report.pending) == (1, 1)
    assert status_calls(sandbox)[transaction_id] == 2
    with pytest.raises(NotFound, match="donation 999 not found"):
        run_poll(backend.engine, config, client, now, donation_id=999)
    [(no_tx, _)] = seed(backend, sandbox, ["pending"], now, transaction_ids=False)
    assert run_poll(backend.engine, config, client, now + MINUTE, donation_id=no_tx).no_transaction_id == 1


def test_limit_takes_the_oldest(backend, sandbox, setup, now):
    config, client = setup
    newer = seed(backend, sandbox, ["pending"] * 3, now + MINUTE)
    older = seed(backend, sandbox, ["pending"] * 2, now)
    report = run_poll(backend.engine, config, client, now + 20 * MINUTE, limit=2)
    assert report.checked == 2
    assert {e.donation_id for e in poll_events(backend)} == {d for d, _ in older}
    assert run_poll(backend.engine, config, client, now + 20 * MINUTE, limit=10).checked == 3
    assert {e.donation_id for e in poll_events(backend)} == {d for d, _ in older + newer}


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
    """Correctness at the benchmark's size. The time (DESIGN §6: 10k in <= 30 s) is bench.poll's to measure:
    a timed assertion here failed on a slower host without saying anything about the code."""
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
