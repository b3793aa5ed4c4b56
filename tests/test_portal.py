"""The portal endpoints: checkout (API key, validation, per-msisdn rate limit) and status (read-your-writes)."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import UTC, datetime

import pytest
from starlette.testclient import TestClient

from jobs.fold import run_fold
from pipeline.db import transaction
from pipeline.models import Donation, PaymentEvent
from receiver.app import create_app
from receiver.portal import CHECKOUT_PATH, STATUS_PATH, RateLimiter
from sandbox.testing import running_sandbox
from tests.builders import add_patient
from tests.test_checkout import azampay_overrides

KEY = "portal-key-123456"


@contextlib.contextmanager
def portal(backend, sandbox, **overrides):
    settings = azampay_overrides(sandbox) | {"receiver.checkout_api_key": KEY, "receiver.status_wait_seconds": 5.0}
    settings.update(overrides)
    config = backend.config(**settings)
    with TestClient(create_app(config)) as client:
        yield client, config


def checkout(client, key=KEY, **body):
    payload = {"patient_id": None, "amount": "5000", "msisdn": "0758285812", "provider": "Mpesa"} | body
    headers = {"content-type": "application/json"} | ({"x-api-key": key} if key is not None else {})
    return client.post(CHECKOUT_PATH, json=payload, headers=headers)


def test_checkout_requires_the_api_key(backend):
    with running_sandbox() as sandbox, portal(backend, sandbox) as (client, _):
        assert checkout(client, key=None).status_code == 401
        assert checkout(client, key="wrong-key-000000").status_code == 401
    with running_sandbox() as sandbox, portal(backend, sandbox, **{"receiver.checkout_api_key": ""}) as (client, _):
        assert checkout(client).status_code == 404
    assert backend.scalar("SELECT COUNT(*) FROM donations") == 0


def test_checkout_creates_a_pending_donation(backend, now):
    patient = add_patient(backend.engine, now)
    with running_sandbox() as sandbox, portal(backend, sandbox) as (client, _):
        response = checkout(client, patient_id=patient, amount="25000", patient_amount="20000", support_amount="5000")
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["status"] == "PENDING" and answer["transaction_id"]
    with transaction(backend.engine) as session:
        donation = session.get(Donation, answer["donation_id"])
        assert donation.transaction_id == answer["transaction_id"]
        assert str(donation.patient_amount) == "20000.00"
        assert donation.external_reference == answer["reference"]


def test_a_share_may_be_zero_as_donations_create_allows(backend, now):
    patient = add_patient(backend.engine, now)
    with running_sandbox() as sandbox, portal(backend, sandbox) as (client, _):
        response = checkout(client, patient_id=patient, amount="25000", patient_amount="25000", support_amount="0")
    assert response.status_code == 201, response.text
    with transaction(backend.engine) as session:
        donation = session.get(Donation, response.json()["donation_id"])
        assert (str(donation.patient_amount), str(donation.support_amount)) == ("25000.00", "0.00")


@pytest.mark.parametrize(
    "body,detail",
    [
        ({"msisdn": "12345"}, "msisdn"),
        ({"provider": "Vodacom"}, "provider"),
        ({"amount": "-5"}, "amount"),
        ({"amount": "0"}, "amount must be positive"),
        ({"amount": 5000.5}, "amount"),
        ({"amount": "1.234"}, "amount"),
        ({"patient_id": "x"}, "patient_id"),
        ({"patient_id": 999}, "patient 999"),
    ],
)
def test_checkout_rejects_bad_input_with_a_clear_4xx(backend, body, detail):
    with running_sandbox() as sandbox, portal(backend, sandbox) as (client, _):
        response = checkout(client, **body)
    assert 400 <= response.status_code < 500
    assert detail in response.json()["detail"]
    assert backend.scalar("SELECT COUNT(*) FROM donations") == 0


def test_checkout_is_rate_limited_per_msisdn(backend):
    with (
        running_sandbox() as sandbox,
        portal(backend, sandbox, **{"receiver.checkout_rate_limit_per_minute": 2}) as (client, _),
    ):
        codes = [checkout(client).status_code for _ in range(3)]
        other = checkout(client, msisdn="0655123456").status_code
    assert codes == [201, 201, 429]
    assert other == 201
    assert backend.scalar("SELECT COUNT(*) FROM donations") == 3


def test_rate_limiter_window_slides():
    limiter = RateLimiter(2, 60.0)
    assert limiter.allow("a", at=0.0) and limiter.allow("a", at=1.0)
    assert not limiter.allow("a", at=59.0)
    assert limiter.allow("a", at=60.5)


def test_status_endpoint_validates_and_404s(backend):
    with running_sandbox() as sandbox, portal(backend, sandbox) as (client, _):
        assert client.get(STATUS_PATH, params={"donation_id": "abc"}, headers={"x-api-key": KEY}).status_code == 400
        assert client.get(STATUS_PATH, params={"donation_id": "999"}, headers={"x-api-key": KEY}).status_code == 404


def test_status_asks_azampay_and_waits_for_the_scheduled_fold(backend):
    """no_callback: only the status call knows. The endpoint appends a poll event and returns the state
    once a (simulated) scheduler fold has passed it; the receiver itself never folds."""
    with (
        running_sandbox(outcomes={"255758285812": "no_callback"}) as sandbox,
        portal(backend, sandbox) as (client, config),
    ):
        donation_id = checkout(client).json()["donation_id"]
        run_fold(backend.engine, config, datetime.now(UTC))
        stop = threading.Event()

        def scheduler():
            while not stop.is_set():
                run_fold(backend.engine, config, datetime.now(UTC))
                time.sleep(0.1)

        folder = threading.Thread(target=scheduler, daemon=True)
        folder.start()
        try:
            first = client.get(STATUS_PATH, params={"donation_id": donation_id}, headers={"x-api-key": KEY}).json()
            second = client.get(STATUS_PATH, params={"donation_id": donation_id}, headers={"x-api-key": KEY}).json()
        finally:
            stop.set()
            folder.join(10)
    assert first["status"] == "COMPLETED" and first["checked_with_azampay"] is True
    assert second["checked_with_azampay"] is False  # already terminal: no second call
    with transaction(backend.engine) as session:
        polls = session.query(PaymentEvent).filter_by(donation_id=donation_id, source="poll").count()
    assert polls == 1


def test_status_check_is_rate_limited_per_donation(backend):
    with (
        running_sandbox(outcomes={"255758285812": "pending"}) as sandbox,
        portal(
            backend,
            sandbox,
            **{"receiver.status_wait_seconds": 0.0, "receiver.status_check_min_interval_seconds": 60.0},
        ) as (client, config),
    ):
        donation_id = checkout(client).json()["donation_id"]
        answers = [
            client.get(STATUS_PATH, params={"donation_id": donation_id}, headers={"x-api-key": KEY}).json()
            for _ in range(3)
        ]
    assert [a["checked_with_azampay"] for a in answers] == [True, False, False]
    assert all(a["status"] == "PENDING" for a in answers)
    assert backend.scalar(f"SELECT COUNT(*) FROM payment_events WHERE source='poll' AND donation_id={donation_id}") == 1


def test_checkout_accepted_but_not_recorded_tells_the_portal_not_to_retry(backend, monkeypatch):
    """AzamPay accepted, then the database failed: a retry would prompt the donor twice."""
    import pipeline.checkout
    from pipeline.errors import StoreError

    def broken_append(session, row):
        raise StoreError("database error: server has gone away")

    with running_sandbox() as sandbox, portal(backend, sandbox) as (client, _):
        monkeypatch.setattr(pipeline.checkout, "append_event", broken_append)
        response = checkout(client)
        calls = len(sandbox.transactions())
    assert response.status_code == 502
    answer = response.json()
    assert (
        answer["status"] == "accepted_not_recorded" and answer["transaction_id"] and "do not retry" in answer["detail"]
    )
    assert calls == 1
    assert backend.scalar("SELECT COUNT(*) FROM donations") == 1  # committed before AzamPay was asked
    assert backend.scalar("SELECT external_reference FROM donations") == answer["reference"]
