"""The poller against the real sandbox over loopback, on SQLite and MariaDB: selection, answers appended
(never donation state), backoff from the log, expiry, the single-donation check. The lease, concurrency,
errors and the CLI are in tests/test_poll_run.py."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import insert

from jobs.fold import run_fold
from jobs.poll import backoff_delay, run_poll
from pipeline.azampay import AzamPayClient
from pipeline.db import transaction
from pipeline.errors import NotFound
from pipeline.models import Donation
from sandbox.testing import running_sandbox
from tests.builders import add_patient, append, callback_body, pending_donation
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
            pending_donation(
                reference,
                created_at,
                amount,
                transaction_id,
                id=donation_id,
                patient_id=patient_id,
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
