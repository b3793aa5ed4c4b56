"""Security 7, against one real serve: forged callbacks never credit; no secret in any log file, process
output or answer; the body size cap; the checkout API key and rate limit. Signatures, constant-time
comparison, hostile strings and the IP allow-list are test_security_input.py."""

from __future__ import annotations

import base64
import json
import socket
from datetime import UTC, datetime

import httpx
import pytest

from jobs.fold import run_fold
from sandbox.testing import running_sandbox
from tests.reliability.helpers import add_donation_row, add_patient_row, callback_json, credits_per_donation
from tests.servers import ServerProcess, config_settings, event_rows, run_cli, write_config

PASSWORD = "wh-pw-Zq8!rel-9d1c"
CLIENT_SECRET = "client-secret-Kx77-rel"
API_KEY = "azam-api-key-Pp31-rel"
CHECKOUT_KEY = "portal-key-Hh90-rel"
CHECKOUT = "/api/v1.0/donors/payment/azampay/checkout/"
STATUS = "/api/v1.0/donors/payment/azampay/status/"
ANSWERS: list[str] = []  # every answer body, scanned for secrets at the end


def post(url: str, body: bytes, headers: dict | None = None) -> httpx.Response:
    response = httpx.post(
        url, content=body, headers={"content-type": "application/json", **(headers or {})}, timeout=15
    )
    ANSWERS.append(response.text)
    return response


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A real serve (webhook password, checkout key) with a sandbox AzamPay on loopback; SQLite."""
    from tests.conftest import _make_backend

    tmp = tmp_path_factory.mktemp("security")
    backend = _make_backend("sqlite", tmp)
    patient = add_patient_row(backend.engine, required="5000")
    d1 = add_donation_row(backend.engine, "RHCI-DN-1-20260114093000", patient, transaction_id="AZ-1")
    d2 = add_donation_row(backend.engine, "RHCI-DN-2-20260114093000", patient, transaction_id="AZ-2")
    with running_sandbox(client_secret=CLIENT_SECRET, api_key=API_KEY, webhook_password=PASSWORD) as sandbox:
        settings = config_settings(
            backend,
            **{
                "webhook.password": PASSWORD,
                "receiver.checkout_api_key": CHECKOUT_KEY,
                "receiver.status_wait_seconds": 0.2,
                "receiver.status_check_min_interval_seconds": 0,
                "azampay.auth_url": sandbox.url,
                "azampay.checkout_url": sandbox.url,
                "azampay.client_id": sandbox.settings.client_id,
                "azampay.client_secret": CLIENT_SECRET,
                "azampay.api_key": API_KEY,
                "webhook.max_body_bytes": 4096,
            },
        )
        config_path = write_config(tmp / "serve.yaml", settings)
        with ServerProcess(config_path, log_dir=tmp / "server") as server:
            yield {
                "backend": backend,
                "server": server,
                "d1": d1,
                "d2": d2,
                "patient": patient,
                "config_path": config_path,
                "config": backend.config(
                    **{
                        k: v
                        for k, v in settings.items()
                        if k not in ("database.url", "logging.dir", "receiver.spool_dir")
                    }
                ),
                "sandbox": sandbox,
                "tmp": tmp,
            }
    backend.engine.dispose()


def test_forged_callbacks_never_credit(world, figures):
    server, backend = world["server"], world["backend"]
    d1_ref, d2_ref = "RHCI-DN-1-20260114093000", "RHCI-DN-2-20260114093000"
    tries = {
        "wrong password": (callback_json(d1_ref, "f1", password=PASSWORD + "x"), 403),
        "wrong password, same length": (callback_json(d1_ref, "f2", password="X" * len(PASSWORD)), 403),
        "empty-string password": (callback_json(d1_ref, "f3", password=""), 202),
        "absent credentials": (callback_json(d1_ref, "f4"), 202),
        "password as a number": (callback_json(d1_ref, "f5", password=12345), 403),
        "password in another field": (callback_json(d1_ref, "f6", message=PASSWORD), 202),
        "bad signature": (callback_json(d1_ref, "f7", signature=base64.b64encode(b"\x00" * 256).decode()), 202),
    }
    for name, (body, expected) in tries.items():
        answer = post(server.callback_url, body)
        assert answer.status_code == expected, (name, answer.status_code, answer.text)
    good = callback_json(d2_ref, "g1", password=PASSWORD, transaction_id="AZ-2")
    assert post(server.callback_url, good).status_code == 200
    # the genuine callback of donation 2, replayed against donation 1 with a changed amount: the static password
    # cannot tell, but the amount can: REVIEW, never a credit
    replay = json.loads(good)
    replay.update(utilityref=d1_ref, amount="1")
    assert post(server.callback_url, json.dumps(replay).encode()).status_code == 200
    run_fold(backend.engine, world["config"], datetime.now(UTC))
    credits = credits_per_donation(backend.engine)
    status_d1 = backend.scalar("SELECT status FROM donations WHERE id = :i", i=world["d1"])
    figures.record(
        "7a. forged callbacks",
        "wrong/empty/numeric/misplaced password, absent credentials, bad signature, a genuine callback replayed on another donation with a changed amount",
        len(tries) + 1,
        {
            "credits from forged callbacks": credits.get(world["d1"], 0),
            "forged donation status": status_d1,
            "genuine credited": credits.get(world["d2"], 0),
        },
    )
    assert credits.get(world["d1"], 0) == 0 and status_d1 == "REVIEW"
    assert credits.get(world["d2"]) == 1


def test_body_size_cap(world, figures):
    server, backend = world["server"], world["backend"]
    limit = 4096
    big = callback_json("RHCI-DN-1-20260114093000", "big", message="A" * limit)
    before = backend.scalar("SELECT MAX(id) FROM payment_events") or 0
    assert post(server.callback_url, big).status_code == 413
    # without Content-Length (chunked): the cap holds while reading
    chunked = httpx.post(
        server.callback_url,
        content=iter([big[:1000], big[1000:3000], big[3000:]]),
        headers={"content-type": "application/json"},
        timeout=15,
    )
    assert chunked.status_code == 413
    # a lying Content-Length: a small header, a bigger body on a raw socket
    host, port = "127.0.0.1", server.port
    with socket.create_connection((host, port), timeout=10) as raw:
        raw.sendall(
            b"POST /api/v1.0/donors/payment/azampay/callback/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \xc2\xb2\r\n\r\n{}"
        )
        reply = raw.recv(200)
    assert reply.startswith(b"HTTP/1.1 4"), reply
    rows = [row for row in event_rows(backend.engine) if row.id > before]
    assert [len(row.body) for row in rows] == [limit, limit], [len(row.body) for row in rows]
    assert all(row.parse_error.startswith("body over the limit") for row in rows)
    figures.record(
        "7d. body size cap",
        "body over webhook.max_body_bytes with Content-Length, chunked, and a non-ASCII Content-Length",
        3,
        {"answers": "413, 413, 4xx", "bytes stored beyond the cap": 0},
    )


def test_checkout_key_and_rate_limit(world, figures):
    url = world["server"].url + CHECKOUT
    body = json.dumps(
        {"patient_id": world["patient"], "amount": "1000", "msisdn": "0712345678", "provider": "Airtel"}
    ).encode()
    answers = [
        post(url, body).status_code,
        post(url, body, {"x-api-key": CHECKOUT_KEY + "x"}).status_code,
        post(url, body, {"authorization": "Bearer wrong"}).status_code,
        post(url, body, {"x-api-key": ""}).status_code,
    ]
    assert answers == [401, 401, 401, 401]
    ok = [post(url, body, {"x-api-key": CHECKOUT_KEY}).status_code for _ in range(5)]
    assert ok[:3] == [201, 201, 201] and ok[3:] == [429, 429], ok
    assert (
        post(url, body.replace(b"0712345678", b"0712345679"), {"x-api-key": CHECKOUT_KEY}).status_code == 201
    )  # per number
    # the status endpoint asks AzamPay (the token is used)
    donation = json.loads(post(url, body.replace(b"0712345678", b"0712345670"), {"x-api-key": CHECKOUT_KEY}).text)[
        "donation_id"
    ]
    status = httpx.get(
        world["server"].url + STATUS, params={"donation_id": donation}, headers={"x-api-key": CHECKOUT_KEY}, timeout=15
    )
    ANSWERS.append(status.text)
    assert status.status_code == 200
    figures.record(
        "7g. checkout API key and rate limit",
        "no key, wrong key, wrong bearer, empty key; 5 checkouts for one number in a minute",
        9,
        {"unauthorised checkouts accepted": 0, "checkouts over the limit accepted": 0},
    )


def test_no_secret_in_any_log_or_answer(world, figures):
    """Runs last in this module: after callbacks with the password, checkouts and a status check (token issued)."""
    server, tmp = world["server"], world["tmp"]
    # the password in a non-JSON body and in an unparseable one, the CLI paths that print events and errors
    post(
        server.callback_url,
        b"password=" + PASSWORD.encode() + b"&utilityref=x",
        {"content-type": "application/x-www-form-urlencoded"},
    )
    post(server.callback_url, b'{"password": "' + PASSWORD.encode() + b'", "broken": ')
    post(
        server.callback_url,
        json.dumps(
            {
                "transactionstatus": "success",
                "utilityref": "x",
                "webhookPassword": PASSWORD,
                "additionalProperties": {"client_secret": CLIENT_SECRET, "apiKey": API_KEY},
            }
        ).encode(),
        {"authorization": f"Bearer {CHECKOUT_KEY}", "x-api-key": API_KEY},
    )
    # (a secret typed into a data field, e.g. "amount", is the sender's own data: kept and shown verbatim by design)
    outputs = []
    last = world["backend"].scalar("SELECT MAX(id) FROM payment_events")
    for args in (
        ("events", "list", "--format", "json"),
        ("events", "show", str(last)),
        ("events", "show", str(last - 1)),
        (
            "donations",
            "create",
            "--patient",
            str(world["patient"]),
            "--amount",
            "1000",
            "--msisdn",
            "0713345678",
            "--provider",
            "Tigo",
        ),
        ("poll", "--donation", "1"),
        ("report", "--format", "json"),
    ):
        done = run_cli(*args, config_path=world["config_path"], timeout=60)
        outputs.append(done.stdout + done.stderr)
    server.stop()
    tokens = list(world["sandbox"]._app.state.tokens)
    assert tokens, "no AzamPay token was issued: the scan would prove nothing about tokens"
    secrets = {
        "webhook password": PASSWORD,
        "client secret": CLIENT_SECRET,
        "api key": API_KEY,
        "checkout key": CHECKOUT_KEY,
    }
    secrets.update({f"token {i}": token for i, token in enumerate(tokens)})
    files = [p for p in tmp.rglob("*") if p.is_file() and p.suffix not in (".db", ".yaml", ".db-wal", ".db-shm")]
    texts = {str(p): p.read_text(errors="replace") for p in files}
    texts.update({f"cli output {i}": text for i, text in enumerate(outputs)})
    texts.update({f"answer {i}": text for i, text in enumerate(ANSWERS)})
    leaks = [(name, where) for name, secret in secrets.items() for where, text in texts.items() if secret in text]
    payments_log = next((t for w, t in texts.items() if w.endswith("payments.log")), "")
    figures.record(
        "7h. secrets in logs and answers",
        "scan of every log file, process output, CLI output and HTTP answer after the security run (password, client secret, API key, checkout key, sandbox tokens)",
        len(texts),
        {"leaks": len(leaks), "secrets searched": len(secrets), "files and outputs scanned": len(texts)},
    )
    assert "Received Azam Pay callback" in payments_log
    assert not leaks, leaks
