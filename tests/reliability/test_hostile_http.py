"""Hostile and slow HTTP traffic (issue 16, parts 7 and 8) against a real `azamrecon serve` on loopback:

8a  the status endpoint with AzamPay answering slowly: /healthz, callbacks and checkouts stay fast
8b  slow and idle clients are cut by the read timeouts; an unfinished body is not stored; the connection cap
8c  a hung MariaDB (a frozen TcpProxy): callbacks are answered 503-spooled well before nginx's proxy timeout
8d  a 70,000-byte User-Agent: answered normally, stored with the header capped, no error line
8e  hostile portal input (ids, amounts, msisdn, nesting): 4xx, never 5xx, nothing created
8f  a bad DATABASE_URL driver or argument: one error line through the CLI

Every loop is bounded in count and time; every process and socket is closed by the test."""

from __future__ import annotations

import base64
import json
import re
import select
import socket
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from sandbox.testing import running_sandbox
from tests.reliability.helpers import add_donation_row, add_patient_row, callback_json, with_port
from tests.servers import ServerProcess, config_settings, event_rows, run_cli, write_config
from tests.tcp_proxy import TcpProxy

KEY = "portal-key-Hostile-51"
STATUS = "/api/v1.0/donors/payment/azampay/status/"
CHECKOUT = "/api/v1.0/donors/payment/azampay/checkout/"
CALLBACK = "/api/v1.0/donors/payment/azampay/callback/"
DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
FAST = 0.5  # seconds: what "answered fast" means for /healthz and a callback
DATABASES = ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)]


def backend_for(db: str, request):
    return request.getfixturevalue("sqlite_backend" if db == "sqlite" else "mysql_backend")


def timed(call) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def proxy_read_timeout() -> float:
    """nginx's proxy_read_timeout as docs/deploy.md sets it (seconds)."""
    found = re.findall(r"proxy_read_timeout\s+(\d+)s;", DEPLOY.read_text(encoding="utf-8"))
    assert len(set(found)) == 1, f"docs/deploy.md should set one proxy_read_timeout, found {found}"
    return float(found[0])


def error_lines(log_dir: Path) -> list[str]:
    lines = []
    for path in log_dir.rglob("*.log"):
        lines += [
            line
            for line in path.read_text(errors="replace").splitlines()
            if "Error processing Azam Pay callback" in line
        ]
    return lines


# --- 8a ---------------------------------------------------------------------------------------------


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


# --- 8c ---------------------------------------------------------------------------------------------


@pytest.mark.mysql
def test_hung_mariadb_answers_503_spooled_before_the_proxy_timeout(mysql_backend, tmp_path, figures):
    """The server freezes (a TcpProxy that stops moving bytes and holds new connections). Before: 30 s
    read timeouts, equal to nginx's proxy_read_timeout, so nginx answered 504 while the receiver spooled."""
    backend = mysql_backend
    add_donation_row(backend.engine, "RHCI-DN-1-20260114093000", add_patient_row(backend.engine))
    database_timeout = 4.0  # receiver.database_timeout_seconds' default
    bound = 2 * database_timeout + 2  # a hung ping, then the reconnect's handshake; plus the spool
    spool = tmp_path / "spool"
    with TcpProxy("127.0.0.1", urlsplit(backend.url).port or 3306) as proxy:
        config = write_config(
            tmp_path / "serve.yaml",
            config_settings(
                backend, **{"database.url": with_port(backend.url, proxy.port), "receiver.spool_dir": str(spool)}
            ),
        )
        with ServerProcess(config, log_dir=tmp_path / "server") as server:
            before = httpx.post(
                server.callback_url,
                content=callback_json("RHCI-DN-1-20260114093000", "before"),
                headers={"content-type": "application/json"},
                timeout=60,
            )
            proxy.freeze()
            answers: list[tuple[int, float]] = []

            def send(marker: str) -> None:
                response, seconds = timed(
                    lambda: httpx.post(
                        server.callback_url,
                        content=callback_json("RHCI-DN-1-20260114093000", marker),
                        headers={"content-type": "application/json"},
                        timeout=60,
                    )
                )
                answers.append((response.status_code, seconds))

            senders = [threading.Thread(target=send, args=(f"hung-{i}",), daemon=True) for i in range(4)]
            for sender in senders:
                sender.start()
                time.sleep(0.5)  # spread over the hang: later ones queue behind a batch already waiting
            for sender in senders:
                sender.join(70)
            proxy.thaw()
    spooled = b"".join(
        base64.b64decode(json.loads(line)["body_b64"])
        for path in spool.rglob("*.jsonl*")
        for line in path.read_text().splitlines()
        if line
    )
    worst = max(seconds for _, seconds in answers)
    nginx = proxy_read_timeout()
    figures.record(
        "8c. hung database vs proxy timeout (mysql)",
        f"MariaDB frozen (TcpProxy holds every connection) while 4 callbacks arrive 0.5 s apart; "
        f"receiver.database_timeout_seconds {database_timeout:g}, nginx proxy_read_timeout {nginx:g} s",
        len(answers),
        {
            "answers": " ".join(str(code) for code, _ in sorted(answers)),
            "worst seconds to answer": round(worst, 1),
            "nginx proxy_read_timeout s": nginx,
            "spooled": sum(spooled.count(f"hung-{i}".encode()) > 0 for i in range(4)),
        },
    )
    assert before.status_code == 200
    assert [code for code, _ in answers] == [503] * 4, answers
    assert worst < bound < nginx / 2, (worst, bound, nginx)
    assert all(f"hung-{i}".encode() in spooled for i in range(4))


def test_locked_sqlite_answers_503_spooled_before_the_proxy_timeout(sqlite_backend, tmp_path, figures):
    """Another process holds SQLite's write lock. Before: a failed group was retried row by row, each row
    waiting busy_timeout again: 10 callbacks at once waited 10 timeouts."""
    backend = sqlite_backend
    add_donation_row(backend.engine, "RHCI-DN-1-20260114093000", add_patient_row(backend.engine))
    busy, callbacks = 1.0, 10
    bound = 2 * busy + 1.5  # the group ahead's wait, its own, and the spool
    spool = tmp_path / "spool"
    config = write_config(
        tmp_path / "serve.yaml",
        config_settings(backend, **{"database.busy_timeout_ms": int(busy * 1000), "receiver.spool_dir": str(spool)}),
    )
    with ServerProcess(config, log_dir=tmp_path / "server") as server:
        answers: list[tuple[int, float]] = []
        client = httpx.Client(limits=httpx.Limits(max_connections=callbacks), timeout=60)

        def send(marker: str) -> None:
            response, seconds = timed(
                lambda: client.post(
                    server.callback_url,
                    content=callback_json("RHCI-DN-1-20260114093000", marker),
                    headers={"content-type": "application/json"},
                )
            )
            answers.append((response.status_code, seconds))

        locker = sqlite3.connect(backend.url.split("sqlite:///", 1)[1], timeout=5)
        locker.isolation_level = None
        locker.execute("BEGIN IMMEDIATE")  # the write lock, held as a long rebuild or a sqlite3 shell would
        try:
            senders = [threading.Thread(target=send, args=(f"locked-{i}",), daemon=True) for i in range(callbacks)]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join(60)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
            client.close()
    worst = max(seconds for _, seconds in answers)
    nginx = proxy_read_timeout()
    figures.record(
        "8c. hung database vs proxy timeout (sqlite)",
        f"SQLite's write lock held by another process while {callbacks} callbacks arrive at once; "
        f"database.busy_timeout_ms {busy * 1000:g}, nginx proxy_read_timeout {nginx:g} s",
        len(answers),
        {"answers": " ".join(sorted({str(code) for code, _ in answers})), "worst seconds to answer": round(worst, 1)},
    )
    assert [code for code, _ in answers] == [503] * callbacks, answers
    assert worst < bound, (worst, bound)


# --- 8d ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("db", DATABASES)
def test_a_70000_byte_user_agent_is_capped_and_stored(db, request, tmp_path, figures):
    """Before, on MariaDB: 503 (the headers column overflowed), a spooled row `ingest-spool` cut silently,
    and an "Error processing Azam Pay callback" line per request."""
    backend = backend_for(db, request)
    add_donation_row(backend.engine, "RHCI-DN-1-20260114093000", add_patient_row(backend.engine))
    config = write_config(tmp_path / "serve.yaml", config_settings(backend))
    size = 70_000
    with ServerProcess(config, log_dir=tmp_path / "server") as server:
        answers = [
            httpx.post(
                server.callback_url,
                content=callback_json(reference, f"ua-{i}"),
                timeout=30,
                headers={"content-type": "application/json", "user-agent": "U" * size, "x-request-id": "R" * size},
            )
            for i, reference in enumerate(("RHCI-DN-1-20260114093000", "RHCI-DN-404-20260114093000"))
        ]
    rows = event_rows(backend.engine)
    stored = [json.loads(row.headers) for row in rows]
    marker = f"...[truncated: {size} bytes]"
    errors = error_lines(tmp_path)
    spooled = [path for path in (tmp_path / "spool").rglob("*") if path.is_file() and path.stat().st_size]
    figures.record(
        f"8d. 70,000-byte header ({db})",
        f"a {size:,}-byte User-Agent and X-Request-Id on a known and an unknown donation's callback",
        len(answers),
        {
            "answers": " ".join(str(a.status_code) for a in answers),
            "stored": len(rows),
            "stored header bytes": max(len(row.headers.encode()) for row in rows),
            "error lines": len(errors),
            "spooled": len(spooled),
        },
    )
    assert [a.status_code for a in answers] == [200, 404]
    assert len(rows) == 2 and not errors and not spooled
    for headers in stored:
        assert headers["user-agent"] == "U" * 512 + marker and headers["x-request-id"] == "R" * 512 + marker


# --- 8e ---------------------------------------------------------------------------------------------

HUGE = 10**30
CHECKOUT_BODIES = {  # name: (changes to a valid body, or raw bytes), and the detail the 4xx must name
    "patient_id 10^30": ({"patient_id": HUGE}, "patient_id"),
    "patient_id 2^63": ({"patient_id": 2**63}, "patient_id"),
    "patient_id -1": ({"patient_id": -1}, "patient_id"),
    "patient_id list": ({"patient_id": [1]}, "patient_id"),
    "amount 10^30": ({"amount": HUGE}, "amount"),
    "amount '1e3'": ({"amount": "1e3"}, "amount"),
    "amount '1_000'": ({"amount": "1_000"}, "amount"),
    "amount full-width": ({"amount": "１０００"}, "amount"),
    "amount '10,00'": ({"amount": "10,00"}, "amount"),
    "amount ' 1000'": ({"amount": " 1000"}, "amount"),
    "amount 'NaN'": ({"amount": "NaN"}, "amount"),
    "amount 'sNaN'": ({"amount": "sNaN"}, "amount"),
    "amount 'Infinity'": ({"amount": "Infinity"}, "amount"),
    "amount '1000.123'": ({"amount": "1000.123"}, "amount"),
    "amount 5000 digits": ({"amount": "9" * 5000}, "amount"),
    "amount object": ({"amount": {"value": 1}}, "amount"),
    "patient_amount 'sNaN'": ({"patient_amount": "sNaN"}, "patient_amount"),
    "support_amount '-0'": ({"support_amount": "-0"}, "support_amount"),
    "msisdn 10^30": ({"msisdn": HUGE}, "msisdn"),
    "msisdn Arabic-Indic digits": ({"msisdn": "٠٧١٢٣٤٥٦٧٨"}, "msisdn"),
    "msisdn 5000 digits": ({"msisdn": "0" * 5000}, "msisdn"),
    "provider number": ({"provider": 5}, "provider"),
    "currency number": ({"currency": 5}, "currency"),
    "currency unknown": ({"currency": "X" * 300}, "currency"),
    "JSON nested 8000 deep": (b"[" * 8000, "invalid JSON"),
    "JSON integer of 5000 digits": (b'{"patient_id": ' + b"1" * 5000 + b"}", "invalid JSON"),
    "not UTF-8": (b'{"amount": "\xff"}', "invalid JSON"),
    "JSON array": (b"[]", "invalid JSON"),
}
STATUS_IDS = ["1" * 19, "0", "-1", "\u00b2", "1e3", "", "9" * 400, "1 ", "０"]


@pytest.mark.parametrize("db", DATABASES)
def test_hostile_portal_input_is_4xx_never_5xx(db, request, tmp_path, figures):
    backend = backend_for(db, request)
    valid = {"patient_id": None, "amount": "1000", "msisdn": "0712345678", "provider": "Airtel"}
    config = write_config(tmp_path / "serve.yaml", config_settings(backend, **{"receiver.checkout_api_key": KEY}))
    answers = {}
    with ServerProcess(config, log_dir=tmp_path / "server") as server:
        for name, (change, _) in CHECKOUT_BODIES.items():
            content = change if isinstance(change, bytes) else json.dumps(valid | change).encode()
            answers[name] = httpx.post(
                server.url + CHECKOUT,
                content=content,
                headers={"x-api-key": KEY, "content-type": "application/json"},
                timeout=30,
            )
        answers["body over 8 KiB, chunked"] = httpx.post(
            server.url + CHECKOUT,
            content=iter([b"{" + b" " * 4096] * 3),
            headers={"x-api-key": KEY, "content-type": "application/json"},
            timeout=30,
        )
        for raw in STATUS_IDS:
            answers[f"status {raw[:20]!r}"] = httpx.get(
                server.url + STATUS, params={"donation_id": raw}, headers={"x-api-key": KEY}, timeout=30
            )
        output = server.output()
    codes = {name: answer.status_code for name, answer in answers.items()}
    figures.record(
        f"8e. hostile portal input ({db})",
        "checkout ids, amounts, msisdn, provider, currency out of range or in another grammar, "
        "8000-deep JSON, a 5000-digit integer, not UTF-8, an over-size chunked body; status donation_id",
        len(answers),
        {
            "5xx": sum(1 for code in codes.values() if code >= 500),
            "tracebacks in the server log": output.count("Traceback"),
            "donations created": backend.scalar("SELECT COUNT(*) FROM donations"),
        },
    )
    assert {name: code for name, code in codes.items() if not 400 <= code < 500} == {}
    for name, (_, detail) in CHECKOUT_BODIES.items():
        assert codes[name] == 400 and detail in answers[name].json()["detail"], (name, answers[name].text)
    assert codes["body over 8 KiB, chunked"] == 413
    assert "Traceback" not in output
    assert backend.scalar("SELECT COUNT(*) FROM donations") == 0


# --- 8f ---------------------------------------------------------------------------------------------

BAD_URLS = [
    "postgresql+nodriver://x/y",
    "mysql+nodriver://u:secret@db/x",
    "sqlite+nodriver:///x.db",
    "mysql+pymysql://u:secret@127.0.0.1:1/x?bogus=1",
    "mysql+pymysql://u:secret@127.0.0.1:1/x?connect_timeout=secret",
]


def test_a_bad_database_url_is_one_error_line(tmp_path, figures):
    """Through the real CLI, as an operator runs it. Before: `mysql+nodriver://` printed a 64-line traceback."""
    config = write_config(
        tmp_path / "config.yaml",
        {"logging.dir": str(tmp_path / "logs"), "privacy.key_file": str(tmp_path / "azamrecon.key")},
    )
    runs = [(url, "report") for url in BAD_URLS] + [(BAD_URLS[1], "init")]
    results = {
        (url, command): run_cli(command, config_path=config, env={"DATABASE_URL": url, "AZAMRECON_DEBUG": ""})
        for url, command in runs
    }
    lines = {key: [line for line in done.stderr.splitlines() if line.strip()] for key, done in results.items()}
    figures.record(
        "8f. bad DATABASE_URL",
        "unknown drivers (postgresql+, mysql+, sqlite+nodriver), an argument the driver does not take, "
        "an argument it cannot convert; `report` and `init` as subprocesses",
        len(results),
        {
            "worst lines on stderr": max(len(found) for found in lines.values()),
            "tracebacks": sum("Traceback" in done.stderr for done in results.values()),
            "exit codes": " ".join(sorted({str(done.returncode) for done in results.values()})),
        },
    )
    for key, done in results.items():
        assert done.returncode == 2 and "Traceback" not in done.stderr, (key, done.stderr[-500:])
        assert len(lines[key]) == 1 and lines[key][0].startswith("error: invalid config value for database.url"), (
            key,
            lines[key],
        )
        assert "secret" not in lines[key][0]


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
