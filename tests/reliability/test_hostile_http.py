"""Hostile and slow HTTP traffic (issue 16, parts 7 and 8) against a real `azamrecon serve` on loopback:

8a  the status endpoint with AzamPay answering slowly: /healthz, callbacks and checkouts stay fast
8b  slow and idle clients are cut by the read timeouts; an unfinished body is not stored; the connection cap
    (and a request pipelined behind another cannot drip its body for ever)

8c-8f (a hung database, a huge header, hostile portal input, a bad database URL): test_hostile_input.py.
Every loop is bounded in count and time; every process and socket is closed by the test."""

from __future__ import annotations

import json
import select
import socket
import threading
import time

import httpx
import pytest

from sandbox.testing import running_sandbox
from tests.reliability.helpers import add_donation_row, add_patient_row, callback_json
from tests.reliability.hostile import CALLBACK, CHECKOUT, DATABASES, FAST, KEY, STATUS, backend_for, timed
from tests.servers import ServerProcess, config_settings, event_rows, write_config


@pytest.mark.parametrize("db", DATABASES)
def test_slow_azampay_never_slows_healthz_callbacks_or_checkout(db, request, tmp_path, figures):
    """60 concurrent status requests while AzamPay answers the status call in 3 s. Before: they took all
    40 of Starlette's threads and /healthz waited for them (7 s with 8 s answers)."""
    backend = backend_for(db, request)
    slow, wait, requests_at_once, workers = 3.0, 1.0, 60, 4
    patient = add_patient_row(backend.engine)
    donations = [
        add_donation_row(backend.engine, f"RHCI-DN-S{i}-20260114093000", patient, transaction_id=f"AZ-S{i}")
        for i in range(requests_at_once)
    ]
    add_donation_row(backend.engine, "RHCI-DN-K-20260114093000", patient)  # the callback's donation
    with running_sandbox() as sandbox:
        sandbox.set_status_latency(slow)
        s = sandbox.settings
        config = write_config(
            tmp_path / "serve.yaml",
            config_settings(
                backend,
                **{
                    "receiver.checkout_api_key": KEY,
                    "receiver.status_check_min_interval_seconds": 0,
                    "receiver.status_wait_seconds": 0.5,
                    "receiver.status_check_timeout_seconds": wait,
                    "receiver.status_workers": workers,
                    "azampay.auth_url": sandbox.url,
                    "azampay.checkout_url": sandbox.url,
                    "azampay.client_id": s.client_id,
                    "azampay.client_secret": s.client_secret,
                    "azampay.api_key": s.api_key,
                },
            ),
        )
        with ServerProcess(config, log_dir=tmp_path / "server") as server:
            answers: list[tuple[int, dict, float]] = []
            gate = threading.Barrier(requests_at_once + 1)
            # one client for all: 60 clients would each build an SSL context, CPU this 2-core machine shares with the receiver
            many = httpx.Client(limits=httpx.Limits(max_connections=requests_at_once), timeout=30)

            def ask(donation_id: int) -> None:
                gate.wait(10)
                response, seconds = timed(
                    lambda: many.get(
                        server.url + STATUS, params={"donation_id": donation_id}, headers={"x-api-key": KEY}
                    )
                )
                answers.append((response.status_code, response.json(), seconds))

            threads = [threading.Thread(target=ask, args=(d,), daemon=True) for d in donations]
            for thread in threads:
                thread.start()
            gate.wait(10)
            started = time.monotonic()
            # the requests that found the pool full answer at once; the pool's 4 AzamPay calls take 3 s: measure in between
            while len(answers) < requests_at_once - workers and time.monotonic() - started < slow - 0.5:
                time.sleep(0.01)
            answered_at_once = len(answers)
            healthz = [timed(lambda: httpx.get(server.url + "/healthz", timeout=30)) for _ in range(5)]
            callback = timed(
                lambda: httpx.post(
                    server.callback_url,
                    content=callback_json("RHCI-DN-K-20260114093000", "slow-az"),
                    headers={"content-type": "application/json"},
                    timeout=30,
                )
            )
            checkout = timed(
                lambda: httpx.post(
                    server.url + CHECKOUT,
                    json={"patient_id": patient, "amount": "1000", "msisdn": "0712345678", "provider": "Airtel"},
                    headers={"x-api-key": KEY},
                    timeout=30,
                )
            )
            for thread in threads:
                thread.join(30)
            many.close()
    worst_healthz = max(seconds for _, seconds in healthz)
    checking = sum(1 for _, body, _ in answers if body.get("checking"))
    figures.record(
        f"8a. status endpoint under slow AzamPay ({db})",
        f"{requests_at_once} concurrent status requests, AzamPay answering the status call in {slow:g} s; /healthz ×5, a callback and a checkout meanwhile",
        requests_at_once + 7,
        {
            "/healthz worst ms": round(worst_healthz * 1000),
            "callback ms": round(callback[1] * 1000),
            "checkout ms": round(checkout[1] * 1000),
            "status answers": len(answers),
            "answered before AzamPay did": answered_at_once,
            "status worst s": round(max(s for *_, s in answers), 2),
            'answered "checking"': checking,
            "5xx": sum(1 for code, *_ in answers if code >= 500),
        },
    )
    assert answered_at_once >= requests_at_once - workers  # before: every request waited for AzamPay
    assert all(r.status_code == 200 for r, _ in healthz) and worst_healthz < FAST, healthz
    assert callback[0].status_code == 200 and callback[1] < FAST, callback
    assert checkout[0].status_code == 201 and checkout[1] < 2 * FAST, (checkout[0].text, checkout[1])
    assert len(answers) == requests_at_once and all(code == 200 for code, *_ in answers)
    assert max(s for *_, s in answers) < wait + 1.5  # never the 3 s AzamPay takes
    assert checking == requests_at_once  # 4 waited 1 s for AzamPay, the rest found the pool full


# --- 8b ---------------------------------------------------------------------------------------------


def _open(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if data:
        sock.sendall(data)
    return sock


def _until_closed(
    socks: dict[str, list[socket.socket]], started: float, bound: float
) -> dict[socket.socket, tuple[float | None, bytes]]:
    """For each socket: (seconds until the server closed it, or None if it was still open at `bound`; what it sent)."""
    pending = {sock for group in socks.values() for sock in group}
    got = {sock: b"" for sock in pending}
    closed: dict[socket.socket, float] = {}
    while pending and time.monotonic() - started < bound:
        readable, _, _ = select.select(list(pending), [], [], 0.05)
        for sock in readable:
            try:
                chunk = sock.recv(4096)
            except OSError:
                chunk = b""
            if chunk:
                got[sock] += chunk
            else:
                closed[sock] = time.monotonic() - started
                pending.discard(sock)
    return {sock: (closed.get(sock), got[sock]) for sock in got}


@pytest.mark.parametrize("db", DATABASES)
def test_slow_and_idle_clients_are_cut_and_store_nothing(db, request, tmp_path, figures):
    backend = backend_for(db, request)
    add_donation_row(backend.engine, "RHCI-DN-1-20260114093000", add_patient_row(backend.engine))
    head, body_timeout, cap = 1.0, 1.0, 40
    config = write_config(
        tmp_path / "serve.yaml",
        config_settings(
            backend,
            **{
                "receiver.header_timeout_seconds": head,
                "receiver.body_timeout_seconds": body_timeout,
                "receiver.keep_alive_timeout_seconds": 1.0,
                "receiver.max_connections": cap,
            },
        ),
    )
    partial_head = f"POST {CALLBACK} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
    partial_body = (
        f"POST {CALLBACK} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n".encode()
        + b'{"transactionstatus": "suc'
    )
    keep_alive = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with ServerProcess(config, log_dir=tmp_path / "server") as server:
        before = len(event_rows(backend.engine))
        started = time.monotonic()
        socks = {
            "idle": [_open(server.port) for _ in range(6)],
            "partial head": [_open(server.port, partial_head) for _ in range(6)],
            "partial body": [_open(server.port, partial_body) for _ in range(6)],
            "dripped body": [_open(server.port, partial_body) for _ in range(6)],
            "idle keep-alive": [_open(server.port, keep_alive) for _ in range(6)],
        }
        stop = threading.Event()

        def drip() -> None:  # a byte every 0.2 s: never idle, never done
            for _ in range(40):
                for sock in socks["dripped body"]:
                    try:
                        sock.send(b" ")
                    except OSError:
                        pass
                if stop.wait(0.2):
                    return

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        callback = timed(
            lambda: httpx.post(
                server.callback_url,
                content=callback_json("RHCI-DN-1-20260114093000", "meanwhile"),
                headers={"content-type": "application/json"},
                timeout=10,
            )
        )
        outcome = _until_closed(socks, started, bound=8.0)
        stop.set()
        dripper.join(5)
        # the cap: with `cap` connections held open, the next request is refused unread
        held = [_open(server.port) for _ in range(cap)]
        time.sleep(0.1)
        over_cap = httpx.post(
            server.callback_url,
            content=callback_json("RHCI-DN-1-20260114093000", "over-cap"),
            headers={"content-type": "application/json"},
            timeout=10,
        )
        for sock in held:
            sock.close()
        after_cap = httpx.post(
            server.callback_url,
            content=callback_json("RHCI-DN-1-20260114093000", "after-cap"),
            headers={"content-type": "application/json"},
            timeout=10,
        )
        for group in socks.values():
            for sock in group:
                sock.close()
        time.sleep(0.3)  # a body the server had not cut would be stored now, as the client is gone
        rows = event_rows(backend.engine)[before:]
    open_at_bound = [kind for kind, group in socks.items() for sock in group if outcome[sock][0] is None]
    worst = max((seconds for seconds, _ in outcome.values() if seconds is not None), default=None)
    answered_408 = {
        kind: sum(1 for sock in group if outcome[sock][1].startswith(b"HTTP/1.1 408")) for kind, group in socks.items()
    }
    markers = sorted(json.loads(row.body)["mnoreference"] for row in rows)
    figures.record(
        f"8b. slow clients ({db})",
        "6 each: idle, partial headers, partial body, body dripped a byte every 0.2 s, idle keep-alive; header/body timeouts 1 s; "
        f"then {cap} idle connections against receiver.max_connections {cap}",
        sum(len(group) for group in socks.values()) + 3,
        {
            "still open after 8 s": len(open_at_bound),
            "worst seconds to close": round(worst or 0, 2),
            "answered 408": sum(answered_408.values()),
            "rows stored from them": len(rows) - 2,
            "callback meanwhile ms": round(callback[1] * 1000),
            "over the cap": over_cap.status_code,
            "after": after_cap.status_code,
        },
    )
    assert not open_at_bound, open_at_bound
    assert worst < head + 1.0, worst  # a whole-request deadline: dripping bytes does not extend it
    assert answered_408 == {"idle": 0, "partial head": 6, "partial body": 6, "dripped body": 6, "idle keep-alive": 0}, (
        answered_408
    )
    assert all(outcome[sock][1].startswith(b"HTTP/1.1 200") for sock in socks["idle keep-alive"])
    assert callback[0].status_code == 200 and callback[1] < FAST
    assert over_cap.status_code == 503 and after_cap.status_code == 200
    assert markers == ["after-cap", "meanwhile"]  # no row from a slow body, nor from the refused request


# --- pipelined requests ------------------------------------------------------------------------------


def test_a_pipelined_request_cannot_drip_its_body_forever(sqlite_backend, tmp_path):
    """A request queued behind another on one connection had no body deadline once its turn came: a client
    could send a quick callback, then a second request's head, then drip that body for ever."""
    backend = sqlite_backend
    config = write_config(
        tmp_path / "serve.yaml",
        config_settings(
            backend,
            **{
                "receiver.header_timeout_seconds": 1.0,
                "receiver.body_timeout_seconds": 1.0,
                "receiver.keep_alive_timeout_seconds": 5.0,
            },
        ),
    )
    quick = callback_json("RHCI-DN-1-20260114093000", "pipelined-first")
    first = (
        f"POST {CALLBACK} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(quick)}\r\n\r\n".encode()
        + quick
    )
    second = (
        f"POST {CALLBACK} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n".encode()
        + b'{"transactionstatus": '
    )
    with ServerProcess(config, log_dir=tmp_path / "server") as server:
        started = time.monotonic()
        sock = _open(server.port, first + second)
        stop = threading.Event()

        def drip() -> None:  # a byte every 0.2 s to the queued body: never idle, never done (bounded: 8 s)
            for _ in range(40):
                try:
                    sock.send(b" ")
                except OSError:
                    return
                if stop.wait(0.2):
                    return

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        outcome = _until_closed({"pipelined": [sock]}, started, bound=8.0)
        stop.set()
        dripper.join(5)
        sock.close()
    closed_after, answer = outcome[sock]
    assert closed_after is not None and closed_after < 4.0, outcome
    assert answer.startswith(b"HTTP/1.1 404")  # the first request was answered
    assert [json.loads(row.body).get("mnoreference") for row in event_rows(backend.engine)] == [
        "pipelined-first"
    ]  # the dripped one was not stored
