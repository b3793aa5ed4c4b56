"""The portal endpoints under hostile or slow conditions (issue 16, part 7): the status endpoint needs the
portal's key; AzamPay calls run on bounded pools of their own and a full pool or a slow AzamPay is answered
at once ("checking": true, or 503 for a checkout). The load test over real HTTP is in
tests/reliability/test_hostile_http.py."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import pytest
from starlette.testclient import TestClient

from pipeline.store.events import HEADER_VALUE_CHARS, select_headers
from receiver.app import create_app
from receiver.pool import BoundedPool
from receiver.portal import CHECKOUT_PATH, STATUS_PATH
from sandbox.testing import running_sandbox
from tests.servers import add_donation
from tests.test_checkout import azampay_overrides

KEY = "status-key-8c1f2a"


@contextlib.contextmanager
def portal(backend, sandbox, **overrides):
    settings = azampay_overrides(sandbox) | {
        "receiver.checkout_api_key": KEY,
        "receiver.status_wait_seconds": 0.0,
        "receiver.status_check_min_interval_seconds": 0.0,
    }
    settings.update(overrides)
    with TestClient(create_app(backend.config(**settings))) as client:
        yield client


def status(client, donation_id, key: str | None = KEY, **headers):
    headers = ({"x-api-key": key} if key is not None else {}) | headers
    return client.get(STATUS_PATH, params={"donation_id": str(donation_id)}, headers=headers)


def test_status_needs_the_portal_key(backend):
    donation = add_donation(backend.engine, "RHCI-DN-1-20260114093000", transaction_id="AZ-1")
    with running_sandbox() as sandbox, portal(backend, sandbox) as client:
        refused = [
            status(client, donation, key=None),
            status(client, donation, key="wrong-" + KEY),
            status(client, donation, key=""),
            status(client, donation, key=None, authorization="Bearer wrong"),
        ]
        by_bearer = status(client, donation, key=None, authorization=f"Bearer {KEY}")
        allowed = status(client, donation)
    assert [r.status_code for r in refused] == [401, 401, 401, 401]
    assert all("reference" not in r.json() and "amount" not in r.json() for r in refused)
    assert by_bearer.status_code == 200 and allowed.status_code == 200
    assert allowed.json()["reference"] == "RHCI-DN-1-20260114093000" and allowed.json()["checking"] is False


def test_status_is_off_without_a_key(backend):
    donation = add_donation(backend.engine, "RHCI-DN-1-20260114093000")
    with running_sandbox() as sandbox, portal(backend, sandbox, **{"receiver.checkout_api_key": ""}) as client:
        answer = status(client, donation)
    assert answer.status_code == 404
    assert answer.json() == {"status": "error", "detail": "status endpoint disabled: set receiver.checkout_api_key"}


def test_a_slow_azampay_is_answered_checking_and_a_full_pool_at_once(sqlite_backend):
    """One status thread; AzamPay answers the status call in 1.5 s. The first request waits its 0.3 s and
    answers "checking"; a request for another donation meanwhile finds the pool full and answers at once.
    The first call goes on: its answer is appended as a poll event."""
    engine = sqlite_backend.engine
    first = add_donation(engine, "RHCI-DN-1-20260114093000", transaction_id="AZ-1")
    second = add_donation(engine, "RHCI-DN-2-20260114093000", transaction_id="AZ-2")
    with (
        running_sandbox() as sandbox,
        portal(
            sqlite_backend, sandbox, **{"receiver.status_workers": 1, "receiver.status_check_timeout_seconds": 0.3}
        ) as client,
    ):
        sandbox.set_status_latency(1.5)
        started = time.monotonic()
        slow = status(client, first).json()
        slow_seconds = time.monotonic() - started
        started = time.monotonic()
        busy = status(client, second).json()
        busy_seconds = time.monotonic() - started
        deadline = time.monotonic() + 5
        while (
            sqlite_backend.scalar("SELECT COUNT(*) FROM payment_events WHERE source = 'poll'") == 0
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        asked = {row[0] for row in sqlite_backend.rows("SELECT donation_id FROM payment_events WHERE source = 'poll'")}
    assert (slow["checking"], slow["checked_with_azampay"], slow["status"]) == (True, False, "PENDING")
    assert 0.25 <= slow_seconds < 1.0, slow_seconds
    assert (busy["checking"], busy["checked_with_azampay"]) == (True, False)
    assert busy_seconds < 0.2, busy_seconds
    assert asked == {first}  # the first donation's call finished after its answer; the second was never asked


def test_status_check_that_answers_in_time_is_not_checking(sqlite_backend):
    donation = add_donation(sqlite_backend.engine, "RHCI-DN-1-20260114093000", transaction_id="AZ-1")
    with running_sandbox() as sandbox, portal(sqlite_backend, sandbox) as client:
        answer = status(client, donation).json()
    assert (answer["checked_with_azampay"], answer["checking"]) == (True, False)


def test_a_full_checkout_pool_is_503_at_once_and_creates_nothing(sqlite_backend):
    with (
        running_sandbox(latency=1.0) as sandbox,
        portal(sqlite_backend, sandbox, **{"receiver.checkout_workers": 1}) as client,
    ):
        body = {"patient_id": None, "amount": "5000", "provider": "Mpesa"}
        results = {}

        def first():
            results["first"] = client.post(
                CHECKOUT_PATH, json=body | {"msisdn": "0758285812"}, headers={"x-api-key": KEY}
            ).status_code

        thread = threading.Thread(target=first)
        thread.start()
        deadline = time.monotonic() + 5
        while sqlite_backend.scalar("SELECT COUNT(*) FROM donations") == 0 and time.monotonic() < deadline:
            time.sleep(0.02)  # the first checkout holds the only thread (AzamPay answers in 1 s)
        started = time.monotonic()
        busy = client.post(CHECKOUT_PATH, json=body | {"msisdn": "0655123456"}, headers={"x-api-key": KEY})
        busy_seconds = time.monotonic() - started
        thread.join(10)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "5", busy.text
    assert busy_seconds < 0.3, busy_seconds
    assert results["first"] == 201
    assert sqlite_backend.scalar("SELECT COUNT(*) FROM donations") == 1


def test_bounded_pool_refuses_when_every_thread_is_busy():
    pool = BoundedPool(2, "test-pool")
    release = threading.Event()
    running = [pool.try_submit(release.wait, 5), pool.try_submit(release.wait, 5)]
    assert all(future is not None for future in running)
    assert pool.try_submit(lambda: 1) is None
    release.set()
    assert [future.result(5) for future in running] == [True, True]
    deadline = time.monotonic() + 5
    while pool.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    again = pool.try_submit(lambda: 7)
    assert again is not None and again.result(5) == 7
    pool.close()


def test_sandbox_status_latency_delays_only_the_status_call():
    with running_sandbox() as sandbox:
        sandbox.set_status_latency(0.5)
        token = httpx.post(
            sandbox.url + "/AppRegistration/GenerateToken",
            json={
                "appName": "x",
                "clientId": sandbox.settings.client_id,
                "clientSecret": sandbox.settings.client_secret,
            },
            timeout=5,
        )
        headers = {
            "Authorization": f"Bearer {token.json()['data']['accessToken']}",
            "X-API-KEY": sandbox.settings.api_key,
        }
        started = time.monotonic()
        httpx.get(sandbox.url + "/api/v1/Partner/GetPaymentPartners", headers=headers, timeout=5)
        fast = time.monotonic() - started
        started = time.monotonic()
        answer = httpx.get(
            sandbox.url + sandbox.settings.status_path, params={"pgReferenceId": "nope"}, headers=headers, timeout=5
        )
        slow = time.monotonic() - started
    assert answer.status_code == 200
    assert fast < 0.3 and slow >= 0.5, (fast, slow)


@pytest.mark.parametrize("size", [HEADER_VALUE_CHARS, HEADER_VALUE_CHARS + 1, 70_000])
def test_kept_header_values_are_capped_with_their_size(size):
    import json

    kept = json.loads(select_headers({"user-agent": "A" * size, "host": "x", "cookie": "dropped"}))
    assert set(kept) == {"user-agent", "host"}
    if size <= HEADER_VALUE_CHARS:
        assert kept["user-agent"] == "A" * size
    else:
        assert kept["user-agent"] == "A" * HEADER_VALUE_CHARS + f"...[truncated: {size} bytes]"
    # seven kept headers, every character escaped (\u001f is 6 bytes), still fit MySQL's TEXT (65,535 bytes)
    worst = select_headers(
        {
            name: "\x1f" * 70_000
            for name in (
                "content-type",
                "content-length",
                "user-agent",
                "x-forwarded-for",
                "x-real-ip",
                "x-request-id",
                "host",
            )
        }
    )
    assert len(worst.encode()) < 65_535
