"""Portal mode end to end over loopback, driven as the portal drives it (docs/portal.md): Django's ORM writes the
donation, its checkout goes to the local AzamPay sandbox, the sandbox's callback reaches the receiver under
uvicorn, the real scheduler folds, and Django's ORM reads the result. Then the portal keeps creating donations
while callbacks arrive and folds run. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select

from jobs.scheduler import build_scheduler
from pipeline.azampay import AzamPayClient
from pipeline.models import FundingCredit
from sandbox.testing import running_sandbox
from tests.portal_mode_helpers import CALLBACK_PATH, JSON, PortalMode, azampay_callback
from tests.test_checkout import azampay_overrides
from tests.test_e2e_sandbox import running_receiver

MSISDN = "0758285812"
WAIT = 10.0  # seconds: the longest any single outcome is waited for


def until(predicate, timeout: float = WAIT, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


@contextlib.contextmanager
def running_scheduler(engine, config, timeout: float = WAIT):
    """jobs/scheduler.py's daemon (build_scheduler: its jobs, intervals and failure handling) on a thread. Stopped
    as its SIGTERM handler stops it: shutdown(wait=True) lets a running job finish."""
    scheduler = build_scheduler(engine, config)
    thread = threading.Thread(target=scheduler.start, name="e2e-scheduler", daemon=True)
    thread.start()
    if not until(lambda: scheduler.running, timeout):
        raise RuntimeError("the scheduler did not start")
    try:
        yield scheduler
    finally:
        scheduler.shutdown(wait=True)
        thread.join(timeout)


def azampay_checkout(client: AzamPayClient, portal, donation, patient, provider: str) -> tuple[str, str]:
    """What donation_type_views.py sends AzamPay before its save: the externalId stamped now, str(int(amount)),
    and the donor info as additionalProperties. Returns (externalId, AzamPay's transactionId)."""
    external_id = portal.external_id(donation)
    properties = {
        "donation_id": donation.id,
        "patient_id": patient.id if patient else None,
        "patient_name": patient.full_name if patient else "General Organization",
        "is_anonymous": True,
        "donation_type": donation.donation_type,
    }
    answer = client.mno_checkout(
        MSISDN, Decimal(int(donation.amount)), external_id, provider, additional_properties=properties
    )
    return external_id, answer.transaction_id


def credits(mode: PortalMode) -> list[tuple]:
    """azamrecon's funding credits (donation, patient, amount), checked to stand under their prefixed name, beside
    the portal's tables (the ORM's statement is rewritten to it; Money reads SQLite's integer cents back)."""
    with mode.engine.connect() as connection:
        rows = connection.execute(
            select(FundingCredit.donation_id, FundingCredit.patient_id, FundingCredit.amount).order_by(
                FundingCredit.donation_id
            )
        ).all()
        assert connection.exec_driver_sql("SELECT COUNT(*) FROM azamrecon_funding_credits").scalar() == len(rows)
    return [tuple(row) for row in rows]


def scalar(mode: PortalMode, sql: str):
    with mode.engine.connect() as connection:
        return connection.exec_driver_sql(sql).scalar()


def callbacks_before_first_read(mode: PortalMode, references: dict[int, str]) -> set[int]:
    """The donations that had their callback in the log before the portal read recorded their row."""
    with mode.engine.connect() as connection:
        callbacks = dict(
            connection.exec_driver_sql(
                "SELECT utilityref, MIN(id) FROM azamrecon_payment_events WHERE source = 'callback' GROUP BY utilityref"
            ).all()
        )
        first_read = dict(
            connection.exec_driver_sql(
                "SELECT donation_id, MIN(id) FROM azamrecon_payment_events WHERE source = 'portal' "
                "AND donation_id IS NOT NULL GROUP BY donation_id"
            ).all()
        )
    return {
        donation_id for donation_id, reference in references.items() if callbacks[reference] < first_read[donation_id]
    }


@pytest.mark.parametrize("callback", ["after_save", "before_save"])
def test_a_portal_checkout_through_the_sandbox_completes_and_funds_its_patient(portal_db, tmp_path, callback):
    """after_save: AzamPay calls back while the donor types the PIN, after the portal's save (the usual order).
    before_save: the callback and a fold both come between the portal's AzamPay call and its save; the row
    was read before it had a transaction_id, so only the full comparison sees the save (scan interval 2 s)."""
    portal = portal_db
    # the sandbox's `delayed` outcome calls back 0.5 s after the checkout; `success` at once
    settings = {"default_outcome": "delayed", "delay_seconds": 0.5} if callback == "after_save" else {}
    with running_sandbox(**settings) as sandbox:
        overrides = azampay_overrides(sandbox)
        if callback == "before_save":
            overrides["portal.scan_interval_seconds"] = 2
        mode = PortalMode(portal_db, tmp_path, **overrides)
        try:
            with (
                running_receiver(mode.config) as callback_url,
                running_scheduler(mode.engine, mode.config),
                AzamPayClient(mode.config.azampay, backoff_factor=0) as client,
            ):
                sandbox.set_callback_url(callback_url)
                patient = portal.create_patient("Asha", 20000)
                donation = portal.create_donation(patient, amount=25000, patient_amount=20000)
                external_id, azampay_id = azampay_checkout(client, portal, donation, patient, "Airtel")
                if callback == "before_save":
                    [early] = sandbox.wait_for_callbacks(1, WAIT)
                    # known (200): found in the portal's table with the reference the view has not saved yet
                    assert early["http_status"] == 200, early
                    assert until(lambda: mode.portal_events(donation.id) == ["owned seen"]), "no fold saw the row"
                portal.checkout_saved_as(donation, external_id, provider="Airtel")
                done = until(lambda: portal.read_donation(donation.id).status == "COMPLETED")
                # the patient is written in the donation's fold batch, in the same transaction
                assert until(lambda: portal.read_patient(patient.id).status == "FULLY_FUNDED", 1.0)
            [sent] = sandbox.callbacks()
        finally:
            mode.close()
    assert done, f"still {portal.read_donation(donation.id).status}; portal events {mode.portal_events(donation.id)}"
    assert sent["payload"]["utilityref"] == external_id
    assert sent["http_status"] == 200
    assert sent["payload"]["additionalProperties"]["donation_id"] == donation.id
    row = portal.read_donation(donation.id)
    assert row.status == "COMPLETED" and row.completed_at is not None
    assert row.transaction_id == external_id  # the portal's fallback value: read, never written
    assert (row.payment_gateway, row.payment_method) == ("Azam Pay", "Mobile Money - Airtel")
    assert row.gateway_reference == azampay_id  # AzamPay's own id, from the callback into the empty column
    patient_row = portal.read_patient(patient.id)
    assert patient_row.funding_received == Decimal("20000.00")  # patient_amount, not the RHCI support share
    assert patient_row.status == "FULLY_FUNDED"
    assert credits(mode) == [(donation.id, patient.id, Decimal("20000.00"))]
    assert scalar(mode, "SELECT COUNT(*) FROM azamrecon_job_runs WHERE job = 'fold' AND outcome = 'ok'") >= 1


N = 40
GATED = 5
PROVIDERS = ("Airtel", "Mpesa", "Tigo", "Halopesa")


def _donation_plan(i: int) -> tuple[int, int, str]:
    """(amount, patient_amount, provider) of the i-th donation: every third carries an RHCI support share."""
    amount = 1000 + 10 * i
    return amount, amount - (100 if i % 3 == 0 else 0), PROVIDERS[i % len(PROVIDERS)]


def test_donations_created_while_callbacks_and_folds_run_are_each_completed_and_credited_once(portal_db, tmp_path):
    """Three threads, each with its own Django or database connections: the portal creating donations and
    saving their checkouts, AzamPay calling back as soon as each is saved (often before any fold has read the
    row), and folds in a loop."""
    portal = portal_db
    mode = PortalMode(portal_db, tmp_path)
    plans = [_donation_plan(i) for i in range(N)]
    patients = [
        portal.create_patient(name, sum(plan[1] for plan in plans[k::2])) for k, name in enumerate(("Asha", "Juma"))
    ]
    saved: queue.Queue = queue.Queue()
    stop = threading.Event()
    errors: list[str] = []
    answers: dict[int, int] = {}
    created: list[int] = []
    references: dict[int, str] = {}
    gated_ids: list[int] = []
    folds = [0]
    # every GATED-th checkout is saved and called back while no fold may start: a callback logged before any
    # fold read its row, whatever the scheduling (the other donations race freely)
    gate = threading.Lock()

    def guarded(name, body):
        def run():
            try:
                body()
            except BaseException as exc:  # any failure fails the test, named by its thread
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
            finally:
                from django.db import connections

                connections.close_all()  # this thread's own Django connections

        return threading.Thread(target=run, name=f"e2e-{name}", daemon=True)

    def create():
        try:
            for i, (amount, patient_amount, provider) in enumerate(plans):
                donation = portal.create_donation(patients[i % 2], amount=amount, patient_amount=patient_amount)
                external_id = portal.external_id(donation)  # the AzamPay call itself is the scenario above
                gated = i % GATED == 0 and gate.acquire(timeout=WAIT)
                portal.checkout_saved_as(donation, external_id, provider=provider)
                created.append(donation.id)
                references[donation.id] = external_id
                saved.put((donation.id, external_id, amount, provider, gated))
        finally:
            saved.put(None)

    def post():
        with httpx.Client(timeout=WAIT) as http:
            while (item := saved.get(timeout=WAIT)) is not None:
                donation_id, external_id, amount, provider, gated = item
                azampay_id = uuid.uuid4().hex
                body = azampay_callback(
                    external_id,
                    amount,
                    operator=provider,
                    reference=azampay_id,
                    externalreference=azampay_id,
                    transid=azampay_id,
                )
                answers[donation_id] = http.post(callback_url, content=body, headers=JSON).status_code
                if gated:
                    gated_ids.append(donation_id)
                    gate.release()

    def fold():
        while not stop.is_set():
            if not gate.acquire(timeout=WAIT):
                raise TimeoutError("the gate was held too long")
            try:
                mode.fold()
            finally:
                gate.release()
            folds[0] += 1

    started = time.monotonic()
    try:
        with running_receiver(mode.config) as callback_url:
            threads = [guarded("portal", create), guarded("azampay", post), guarded("fold", fold)]
            for thread in threads:
                thread.start()
            for thread in threads[:2]:
                thread.join(WAIT * 2)
            stop.set()
            threads[2].join(WAIT)
            assert not any(thread.is_alive() for thread in threads), "a thread did not finish in time"
        mode.fold()  # the final fold
        statuses = {donation_id: portal.read_donation(donation_id).status for donation_id in created}
        funding = [portal.read_patient(patient.id) for patient in patients]
        credited = credits(mode)
        early = callbacks_before_first_read(mode, references)
        anomalies = scalar(mode, "SELECT COUNT(*) FROM azamrecon_anomalies")
    finally:
        mode.close()
    elapsed = time.monotonic() - started
    assert errors == [], errors
    assert len(created) == N and answers == dict.fromkeys(created, 200)
    assert set(statuses.values()) == {"COMPLETED"}, statuses
    assert [row[0] for row in credited] == sorted(created)  # each donation credited exactly once
    for k, patient in enumerate(funding):
        expected = sum(plan[1] for plan in plans[k::2])
        assert (patient.funding_received, patient.status) == (Decimal(expected), "FULLY_FUNDED"), patient.full_name
        assert sum(row[2] for row in credited if row[1] == patient.id) == expected
    assert anomalies == 0
    # the race the test is for: callbacks the log held before any fold had read their donation's row
    assert len(gated_ids) == len(range(0, N, GATED)) and set(gated_ids) <= early, (gated_ids, early)
    print(f"{len(early)} of {N} callbacks before the first read of their row, {folds[0]} folds, {elapsed:.1f} s")


def require(condition, what: str) -> None:
    """A precondition of the test below: its failure is an error of the set-up, not of what is tested."""
    if not condition:
        raise RuntimeError(what)


# MariaDB only: on SQLite's single writer the higher id cannot commit while the lower one's insert is open
@pytest.mark.parametrize("portal_db", [pytest.param("mysql", marks=pytest.mark.mysql)], indirect=True)
def test_a_donation_committed_after_a_higher_id_was_read_is_not_left_to_the_full_comparison(portal_db, tmp_path):
    """Two portal workers: a checkout's INSERT (in the view's transaction.atomic()) has its id but has not
    committed when a Bill Pay notification's COMPLETED row, one id higher, commits and a fold reads it."""
    portal = portal_db
    mode = PortalMode(portal_db, tmp_path)
    inserted, commit = threading.Event(), threading.Event()
    made: list = []

    def checkout_worker():
        from django.db import connections, transaction

        try:
            with transaction.atomic(using=portal.alias):
                made.append(portal.create_donation(None, amount=1000))
                inserted.set()
                commit.wait(WAIT)
        finally:
            connections.close_all()

    try:
        worker = threading.Thread(target=checkout_worker, name="e2e-checkout-worker", daemon=True)
        worker.start()
        require(inserted.wait(WAIT), "the checkout worker did not insert")
        bill_pay = portal.bill_pay_donation(portal.create_patient("Juma", 5000), 5000)
        mode.fold()  # reads the Bill Pay row, one id above the checkout's uncommitted one
        commit.set()
        worker.join(WAIT)
        [late] = made
        require(bill_pay.id > late.id, "the ids were not out of commit order")
        external_id = portal.checkout_saved(late)
        with mode.receiver() as client:
            answer = client.post(CALLBACK_PATH, content=azampay_callback(external_id, 1000), headers=JSON)
        require(answer.status_code == 200, f"callback answered {answer.status_code}")  # found in the portal's table
        mode.fold()
        status = portal.read_donation(late.id).status
        unknown = mode.anomalies("unknown_reference")
    finally:
        mode.close()
    assert (status, unknown) == ("COMPLETED", [])
