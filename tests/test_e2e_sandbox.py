"""End to end over loopback: checkout -> sandbox -> callback -> receiver (uvicorn) -> log -> fold -> poll.

The receiver runs in a background thread (uvicorn on 127.0.0.1, an OS-chosen port); the sandbox posts
its callbacks there. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
import uvicorn

from jobs.fold import run_fold
from jobs.poll import run_poll
from jobs.runs import utcnow
from pipeline.azampay import AzamPayClient
from pipeline.checkout import initiate_checkout
from pipeline.db import transaction
from pipeline.models import Patient
from receiver.app import CALLBACK_PATH, create_app
from sandbox.testing import running_sandbox
from tests.builders import add_patient, callback_body
from tests.test_checkout import anomaly_kinds, azampay_overrides, donation

MINUTE = timedelta(minutes=1)
PASSWORD = "e2e-webhook-password"


@contextlib.contextmanager
def running_receiver(config, timeout: float = 10.0) -> Iterator[str]:
    """The receiver app served by uvicorn in a thread on 127.0.0.1:<free port>; yields the callback URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning", lifespan="on", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="e2e-receiver", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("receiver did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}{CALLBACK_PATH}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


@pytest.fixture
def webhook_password() -> str | None:
    """None: callbacks carry no credential. A test parametrizes it to configure a password on both sides."""
    return None


@pytest.fixture
def world(backend, webhook_password):
    """(config, sandbox, client, callback_url)."""
    password = webhook_password
    with running_sandbox(webhook_password=password) as sandbox:
        overrides = azampay_overrides(sandbox)
        if password:
            overrides["webhook.password"] = password
        config = backend.config(**overrides)
        with running_receiver(config) as callback_url:
            sandbox.set_callback_url(callback_url)
            with AzamPayClient(config.azampay, backoff_factor=0) as client:
                yield config, sandbox, client, callback_url


def checkout(backend, world, outcome, now, patient_id=None, amount="25000", patient_amount=None, support_amount=None):
    config, sandbox, client, _ = world
    result = initiate_checkout(
        backend.engine,
        config,
        client,
        patient_id=patient_id,
        amount=Decimal(amount),
        msisdn="0758285812",
        provider="Mpesa",
        now=now,
        patient_amount=None if patient_amount is None else Decimal(patient_amount),
        support_amount=None if support_amount is None else Decimal(support_amount),
        extra_properties={"sandbox_outcome": outcome},
    )
    assert result.accepted, result.error
    return result


def deliveries(sandbox, count: int) -> list[dict]:
    sent = sandbox.wait_for_callbacks(count, timeout=10)
    assert len(sent) >= count, f"only {len(sent)} of {count} callbacks delivered"
    return sent


def funding(backend, patient_id) -> Decimal:
    with transaction(backend.engine) as session:
        return session.get(Patient, patient_id).funding_received


def credits(backend, donation_id) -> list:
    return backend.rows("SELECT patient_id FROM funding_credits WHERE donation_id = :d", d=donation_id)


def test_callback_completes_and_credits_the_patient_share(backend, world):
    config, sandbox, client, _ = world
    now = utcnow()
    patient = add_patient(backend.engine, now, required="100000")
    result = checkout(
        backend,
        world,
        "success",
        now,
        patient_id=patient,
        amount="25000",
        patient_amount="20000",
        support_amount="5000",
    )
    [sent] = deliveries(sandbox, 1)
    assert sent["http_status"] == 200 and sent["payload"]["utilityref"] == result.reference
    run_fold(backend.engine, config, utcnow())
    row = donation(backend, result.donation_id)
    assert row.status == "COMPLETED" and row.completed_at is not None
    assert funding(backend, patient) == Decimal("20000")  # patient_amount, not the support share
    assert len(credits(backend, result.donation_id)) == 1
    # nothing left for the poller
    assert run_poll(backend.engine, config, client, now + 11 * MINUTE).candidates == 0


def test_no_callback_is_confirmed_by_the_poll(backend, world):
    config, sandbox, client, _ = world
    now = utcnow()
    patient = add_patient(backend.engine, now, required="25000")
    result = checkout(backend, world, "no_callback", now, patient_id=patient)
    run_fold(backend.engine, config, utcnow())
    assert donation(backend, result.donation_id).status == "PENDING"
    assert sandbox.callback_count() == 0
    assert run_poll(backend.engine, config, client, now + 5 * MINUTE).checked == 0  # not stuck yet
    report = run_poll(backend.engine, config, client, now + 11 * MINUTE)
    assert (report.checked, report.success) == (1, 1)
    run_fold(backend.engine, config, now + 11 * MINUTE)
    assert donation(backend, result.donation_id).status == "COMPLETED"
    with transaction(backend.engine) as session:
        patient_row = session.get(Patient, patient)
        assert (patient_row.funding_received, patient_row.status) == (Decimal("25000"), "FULLY_FUNDED")


@pytest.mark.parametrize("webhook_password", [PASSWORD])
def test_forged_callback_is_not_credited_until_the_poll_decides(backend, world):
    config, sandbox, client, _ = world
    now = utcnow()
    patient = add_patient(backend.engine, now)
    genuine = checkout(backend, world, "success", now, patient_id=patient, amount="1000")
    forged = checkout(backend, world, "forged", now, patient_id=patient, amount="2000")
    sent = {d["payload"]["utilityref"]: d for d in deliveries(sandbox, 2)}
    assert sent[genuine.reference]["http_status"] == 200
    assert sent[forged.reference]["http_status"] == 403
    run_fold(backend.engine, config, utcnow())
    assert donation(backend, genuine.donation_id).status == "COMPLETED"
    row = donation(backend, forged.donation_id)
    assert row.status == "PENDING" and row.needs_check
    assert anomaly_kinds(backend, forged.donation_id) == ["unauthenticated"]
    assert credits(backend, forged.donation_id) == [] and funding(backend, patient) == Decimal("1000")

    report = run_poll(backend.engine, config, client, now + MINUTE)  # needs_check: no 10-minute wait
    assert (report.checked, report.success) == (1, 1)
    run_fold(backend.engine, config, utcnow())
    assert donation(backend, forged.donation_id).status == "COMPLETED"
    assert len(credits(backend, forged.donation_id)) == 1 and funding(backend, patient) == Decimal("3000")


def test_amount_mismatch_goes_to_review_without_credit(backend, world):
    config, sandbox, client, _ = world
    now = utcnow()
    patient = add_patient(backend.engine, now)
    result = checkout(backend, world, "amount_mismatch", now, patient_id=patient, amount="5000")
    [sent] = deliveries(sandbox, 1)
    assert sent["payload"]["amount"] == "5001"
    run_fold(backend.engine, config, utcnow())
    row = donation(backend, result.donation_id)
    assert row.status == "REVIEW" and "5001" in row.review_reason
    assert "amount_mismatch" in anomaly_kinds(backend, result.donation_id)
    assert credits(backend, result.donation_id) == [] and funding(backend, patient) == Decimal("0")
    # REVIEW is not PENDING: the scheduled poll leaves it to the operator
    assert run_poll(backend.engine, config, client, now + 11 * MINUTE).candidates == 0
    run_fold(backend.engine, config, utcnow())
    assert donation(backend, result.donation_id).status == "REVIEW"


def test_no_answer_for_a_day_expires_then_a_late_success_completes(backend, world):
    config, sandbox, client, callback_url = world
    now = utcnow()
    patient = add_patient(backend.engine, now)
    result = checkout(backend, world, "pending", now, patient_id=patient, amount="7000")
    assert run_poll(backend.engine, config, client, now + 11 * MINUTE).pending == 1
    report = run_poll(backend.engine, config, client, now + timedelta(hours=25))
    assert (report.pending, report.expired) == (1, 1)
    run_fold(backend.engine, config, utcnow())
    assert donation(backend, result.donation_id).status == "EXPIRED"
    assert credits(backend, result.donation_id) == []

    # AzamPay's success callback arrives at last (the live shape: utilityref is our reference)
    sandbox.set_status_text(result.transaction_id, "Transaction successful.")
    body = callback_body(result.reference, transaction_id=result.transaction_id, amount="7000")
    answer = httpx.post(callback_url, content=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 200
    run_fold(backend.engine, config, utcnow())
    row = donation(backend, result.donation_id)
    assert row.status == "COMPLETED"
    assert "late_success" in anomaly_kinds(backend, result.donation_id)
    assert funding(backend, patient) == Decimal("7000")
