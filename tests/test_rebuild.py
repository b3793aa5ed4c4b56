"""jobs/rebuild.py: rebuild, rebuild --check (in memory, writes nothing) and --as-of, on SQLite and MariaDB."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import delete, select, update

from jobs.fold import run_fold
from jobs.rebuild import as_of, check, rebuild
from pipeline.db import transaction
from pipeline.models import Anomaly, Donation, FundingCredit, Patient
from pipeline.snapshot import differences
from pipeline.store.donations import make_reference
from tests.builders import add_donation, add_patient, at, callback_body
from tests.fold_helpers import (
    checkpoint,
    donation_row,
    failure,
    patient_row,
    populate,
    snapshot,
    success,
    violations,
    write_event,
)


def test_check_finds_nothing_after_normal_operation(backend, now):
    config = backend.config(**{"fold.batch_size": 3})
    ids = populate(backend, now)
    run_fold(backend.engine, config, at(now, 30), max_batches=2)
    result = check(backend.engine, config)
    assert result.differences == []
    assert result.position == checkpoint(backend).position == ids["events"][5]
    assert result.events_compared == 6
    assert "6 newer event id(s) not folded yet" in result.lag_note
    run_fold(backend.engine, config, at(now, 31))
    success(backend.engine, ids["review_ref"], at(now, 32))
    failure(backend.engine, ids["share_ref"], at(now, 33), amount="30000")
    run_fold(backend.engine, config, at(now, 34))
    result = check(backend.engine, config)
    assert (result.differences, result.events_compared, result.lag_note) == ([], 14, "")


TAMPERING = {
    "credit amount": (
        lambda ids: (
            update(FundingCredit).where(FundingCredit.donation_id == ids["paid"]).values(amount=Decimal("24000"))
        ),
        lambda ids: f"credit for donation {ids['paid']}: live",
    ),
    "donation status": (
        lambda ids: update(Donation).where(Donation.id == ids["failed"]).values(status="CANCELLED"),
        lambda ids: f"donation {ids['failed']} status: live 'CANCELLED' rebuild 'FAILED'",
    ),
    "patient total": (
        lambda ids: update(Patient).where(Patient.id == ids["amina"]).values(funding_received=Decimal("40000.01")),
        lambda ids: f"patient {ids['amina']} (received, status, fully_funded_at): live ('40000.01'",
    ),
    "anomaly deleted": (
        lambda ids: delete(Anomaly).where(Anomaly.donation_id == ids["review"]),
        lambda ids: f"anomaly only in rebuild: event {ids['events'][1]} donation {ids['review']} amount_mismatch",
    ),
    "credit deleted": (
        lambda ids: delete(FundingCredit).where(FundingCredit.donation_id == ids["general"]),
        lambda ids: f"credit for donation {ids['general']}: live None",
    ),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERING))
def test_check_reports_a_tampered_derived_row_and_rebuild_repairs_it(backend, now, tamper):
    config = backend.config()
    ids = populate(backend, now)
    run_fold(backend.engine, config, at(now, 30))
    statement, expected = TAMPERING[tamper]
    with transaction(backend.engine) as session:
        session.execute(statement(ids).execution_options(synchronize_session=False))
    tampered = snapshot(backend)

    found = check(backend.engine, config).differences
    assert len(found) == 1, found
    assert found[0].startswith(expected(ids)), found
    assert differences(tampered, snapshot(backend)) == []  # --check wrote nothing

    report = rebuild(backend.engine, config, at(now, 40))
    assert report.events == 12
    assert check(backend.engine, config).differences == []
    assert violations(backend) == []


def test_rebuild_reproduces_the_incremental_state_and_is_repeatable(backend, now):
    config = backend.config(**{"fold.batch_size": 2})
    ids = populate(backend, now)
    run_fold(backend.engine, config, at(now, 30))
    live = snapshot(backend)
    first = rebuild(backend.engine, config, at(now, 40))
    assert (first.events, first.credits_added, first.anomalies) == (12, 5, 6)
    assert differences(live, snapshot(backend)) == []
    rebuild(backend.engine, config, at(now, 50))
    assert differences(live, snapshot(backend)) == []
    cp = checkpoint(backend)
    assert (cp.position, cp.events_applied, cp.gaps) == (ids["events"][-1], 12, [])
    # and the fold carries on from there
    success(backend.engine, ids["review_ref"], at(now, 60))
    assert run_fold(backend.engine, config, at(now, 61)).events == 1
    assert donation_row(backend, ids["review"])["status"] == "COMPLETED"


def test_rebuild_with_missing_ids_in_the_log(backend, now):
    """Holes left by rolled-back inserts are not events; a rebuild and the fold after it cope."""
    config = backend.config()
    donation, reference = add_donation(backend.engine, now, amount="25000")
    write_event(backend.engine, received_at=at(now, 1), body=callback_body(reference, status="failure"), event_id=3)
    write_event(backend.engine, received_at=at(now, 2), body=callback_body(reference, status="success"), event_id=7)
    run_fold(backend.engine, config, at(now, 3))
    assert check(backend.engine, config).differences == []
    rebuild(backend.engine, config, at(now, 4))
    assert donation_row(backend, donation)["status"] == "COMPLETED"
    assert check(backend.engine, config).differences == []


def test_as_of_equals_the_live_state_of_a_fold_stopped_at_that_instant(backend, now):
    config = backend.config()
    engine = backend.engine
    amina = add_patient(engine, now, required="30000")
    first, first_ref = add_donation(engine, at(now, 1), patient_id=amina, amount="25000")
    second, second_ref = add_donation(engine, at(now, 2), patient_id=amina, amount="5000")
    third, third_ref = add_donation(engine, at(now, 3), amount="7000")
    success(engine, first_ref, at(now, 10))
    success(engine, second_ref, at(now, 11), amount="5001")  # REVIEW
    failure(engine, third_ref, at(now, 12), amount="7000")
    success(engine, "RHCI-DN-77-20260114093100", at(now, 13), transaction_id="tx-later")  # its donation comes later
    cutoff = at(now, 20)
    run_fold(engine, config, cutoff)
    known_then = snapshot(backend)
    assert patient_row(backend, amina)["status"] == "FUNDING"

    # after the cutoff: new patient and donations, decisions that change the earlier donations
    baraka = add_patient(engine, at(now, 30), required="1000")
    fourth, fourth_ref = add_donation(engine, at(now, 31), patient_id=baraka, amount="1000", transaction_id="tx-later")
    success(engine, fourth_ref, at(now, 32), amount="1000")
    success(engine, second_ref, at(now, 33), amount="5000")
    success(engine, third_ref, at(now, 34), amount="7000")
    run_fold(engine, config, at(now, 40))
    assert patient_row(backend, amina)["status"] == "FULLY_FUNDED"
    assert donation_row(backend, third)["status"] == "COMPLETED"

    then = as_of(engine, config, cutoff)
    assert differences(known_then, then) == []
    assert then == known_then
    assert str(fourth) not in then.as_dict()["donations"] and str(baraka) not in then.as_dict()["patients"]
    # and "now" as_of is the live state
    assert differences(snapshot(backend), as_of(engine, config, at(now, 40))) == []
    with transaction(engine) as session:
        assert (
            session.scalar(select(Donation.status).where(Donation.id == second)) == "COMPLETED"
        )  # as_of wrote nothing


def test_check_does_not_flag_a_donation_the_fold_has_not_offered_yet(backend, now):
    """A callback named a donation before it existed (unknown_reference); the donation is then created.
    Until the next fold offers it to the waiting event, the live state is exactly what the fold should
    have produced: --check must not report 10 'differences' (it did, exiting 1, with no lag note)."""
    config = backend.config()
    created = at(now, 30)
    event = success(backend.engine, make_reference("RHCI-DN", 1, created), at(now, 10))
    run_fold(backend.engine, config, at(now, 12))
    donation, _ = add_donation(backend.engine, created, amount="25000")
    assert check(backend.engine, config).differences == []
    run_fold(backend.engine, config, at(now, 40))
    assert donation_row(backend, donation)["credit_event_id"] == event
    assert check(backend.engine, config).differences == []


def test_a_rebuild_in_progress_quiets_every_fold_and_pauses_the_poller(backend, now, monkeypatch, tmp_path):
    """Crash a rebuild right after its reset: the next (scheduled-style) fold finishes the refold without
    re-announcing old completions, and the poller refuses to run until the log is refolded."""
    from loguru import logger

    import jobs.rebuild as rebuild_module
    from jobs.poll import run_poll
    from pipeline.errors import LockBusy
    from pipeline.logs import configure_logging
    from tests.builders import append

    config = backend.config()
    patient = add_patient(backend.engine, now)
    _, reference = add_donation(backend.engine, now, patient)
    append(backend.engine, callback_body(reference), at(now, 1))
    run_fold(backend.engine, config, at(now, 2))

    def crash(*args, **kwargs):
        raise RuntimeError("killed after the reset")

    monkeypatch.setattr(rebuild_module, "run_fold", crash)
    with pytest.raises(RuntimeError):
        rebuild(backend.engine, config, at(now, 3))
    monkeypatch.undo()
    assert backend.scalar("SELECT status FROM donations") == "PENDING"
    assert backend.scalar("SELECT rebuild_until FROM fold_checkpoints") is not None
    with pytest.raises(LockBusy, match="rebuild"):
        run_poll(backend.engine, config, client=None, now=at(now, 4))

    configure_logging(config.logging, stderr_level=None)
    try:
        run_fold(backend.engine, config, at(now, 5))  # announce=True, like the scheduler's
    finally:
        logger.remove()
    assert backend.scalar("SELECT status FROM donations") == "COMPLETED"
    assert backend.scalar("SELECT rebuild_until FROM fold_checkpoints") is None
    payments = (tmp_path / "logs" / "payments.log").read_text() if (tmp_path / "logs" / "payments.log").exists() else ""
    assert "completed successfully" not in payments
    assert check(backend.engine, config).differences == []


def test_a_rebuild_under_load_announces_every_payment_exactly_once(backend, now, tmp_path):
    """Issue: with callbacks arriving and a scheduler folding, `rebuild` left paid donations without their
    '✅ Donation N completed successfully' line: every batch it folded past its start was silent. Now a
    rebuild is quiet only up to the log position it started from; the guide's grep counts each payment once."""
    import threading
    import time

    from loguru import logger

    from pipeline.logs import configure_logging
    from tests.builders import append

    config = backend.config(**{"fold.batch_size": 5})
    patient = add_patient(backend.engine, now, required="100000000")
    donations = [add_donation(backend.engine, now, patient) for _ in range(45)]
    configure_logging(config.logging, stderr_level=None)
    stop = threading.Event()
    failures: list[BaseException] = []

    def pay(first: int, last: int, pause: float = 0.0) -> None:
        for donation_id, reference in donations[first:last]:
            append(backend.engine, callback_body(reference, transaction_id=f"tx-{donation_id}"), at(now, 1))
            time.sleep(pause)

    def scheduler() -> None:  # the scheduler's fold, every few milliseconds, bounded by the test
        try:
            while not stop.is_set():
                run_fold(backend.engine, config, at(now, 2))
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    arrivals = threading.Thread(target=pay, args=(30, 45, 0.01))
    folding = threading.Thread(target=scheduler)
    batches = []

    def progress(position: int, total: int) -> None:
        batches.append(position)
        if len(batches) == 1:  # callbacks arrive while the rebuild runs; its next batch folds them itself
            pay(15, 30)
        elif len(batches) == 2:  # then more arrive, and the scheduler's folds compete with the rebuild's
            arrivals.start()
            folding.start()

    try:
        pay(0, 15)
        run_fold(backend.engine, config, at(now, 2))
        rebuild(backend.engine, config, at(now, 3), progress=progress)
        if arrivals.is_alive() or len(batches) >= 2:
            arrivals.join(timeout=60)
        stop.set()
        if len(batches) >= 2:
            folding.join(timeout=60)
        run_fold(backend.engine, config, at(now, 4))
    finally:
        stop.set()
        logger.remove()
    assert not failures, failures
    lines = (tmp_path / "logs" / "payments.log").read_text(encoding="utf-8").splitlines()
    completed = [line.split("✅ Donation ", 1)[1].split(" ", 1)[0] for line in lines if "✅ Donation " in line]
    assert sorted(map(int, completed)) == sorted(donation_id for donation_id, _ in donations)
    processed = [line for line in lines if "Processed callback - External ID: " in line and "Status: SUCCESS" in line]
    assert len(processed) == len(donations)
    assert backend.scalar("SELECT COUNT(*) FROM donations WHERE status = 'COMPLETED'") == len(donations)
    assert check(backend.engine, config).differences == []
