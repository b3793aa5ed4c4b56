"""Security 7: forged callbacks never credit; constant-time credential comparison; no secret in any log
file, process output or answer; the body size cap; SQL-injection and control-character strings stored
verbatim and harmless; the IP allow-list and trusted proxies; the checkout API key and rate limit."""

from __future__ import annotations

import base64
import hmac
import json
import socket
from datetime import UTC, datetime

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from sqlalchemy import inspect as sa_inspect

from jobs.fold import run_fold
from jobs.rebuild import check
from pipeline import auth as auth_module
from pipeline.auth import Authenticator
from pipeline.db import transaction
from pipeline.events import extract_fields
from pipeline.store.events import append_event, event_row
from sandbox.testing import running_sandbox
from tests.reliability.helpers import add_donation_row, add_patient_row, callback_json, credits_per_donation
from tests.servers import ServerProcess, config_settings, event_rows, run_cli, write_config

PASSWORD = "wh-pw-Zq8!rel-9d1c"
CLIENT_SECRET = "client-secret-Kx77-rel"
API_KEY = "azam-api-key-Pp31-rel"
CHECKOUT_KEY = "portal-key-Hh90-rel"
CHECKOUT = "/api/v1.0/donors/payment/azampay/checkout/"
STATUS = "/api/v1.0/donors/payment/azampay/status/"
HOSTILE = [
    "'; DROP TABLE payment_events;--",
    '" OR 1=1 -- ',
    "x'); DELETE FROM donations; --",
    "\x00\x01\x07\x1b[31m\r\n\t",
    "\u202eevil\u200b",
    "%s%s%n",
    "{{7*7}}",
    "Robert'); DROP TABLE funding_credits;--" * 20,
]
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


def test_signature_forgeries_never_credit(tmp_path, sqlite_backend, now, figures):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    config = sqlite_backend.config(**{"webhook.signature_public_key_pem": pem})
    authenticator = Authenticator.from_config(config.webhook)
    patient = add_patient_row(sqlite_backend.engine)
    refs = [f"RHCI-DN-{i}-20260114093000" for i in range(1, 5)]
    ids = [add_donation_row(sqlite_backend.engine, ref, patient) for ref in refs]

    def signed(ref: str, amount: str, marker: str, sign_ref: str | None = None, status: str = "success") -> bytes:
        message = ((sign_ref or ref) + f"TX-{marker}" + status + "Mpesa").encode()
        signature = base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()
        return callback_json(ref, marker, status=status, amount=amount, signature=signature)

    bodies = {
        "genuine": signed(refs[0], "1000", "s1"),
        "signature of another donation": signed(refs[1], "1000", "s2", sign_ref=refs[0]),
        "signature not base64": callback_json(refs[2], "s3", signature="not*base64"),
        "truncated signature": callback_json(
            refs[3], "s4", signature=json.loads(signed(refs[3], "1000", "s4"))["signature"][:-8]
        ),
        "status changed after signing": signed(refs[2], "1000", "s5").replace(b'"success"', b'"SUCCESS"'),
    }
    auths = {}
    with transaction(sqlite_backend.engine) as session:
        for name, body in bodies.items():
            fields = extract_fields(body)
            auths[name] = authenticator.check(fields, body)
            append_event(
                session, event_row(source="callback", body=body, received_at=now, auth=auths[name], fields=fields)
            )
    run_fold(sqlite_backend.engine, config, now)
    credits = credits_per_donation(sqlite_backend.engine)
    assert auths == {
        "genuine": "signed",
        "signature of another donation": "failed",
        "signature not base64": "failed",
        "truncated signature": "failed",
        "status changed after signing": "failed",
    }
    assert set(credits) == {ids[0]}
    figures.record(
        "7b. forged signatures",
        "RSA signatures: another donation's, not base64, truncated, message changed after signing",
        len(bodies) - 1,
        {"verified forgeries": 0, "credits from forgeries": len(set(credits) - {ids[0]})},
    )


def test_credentials_compared_in_constant_time(monkeypatch, figures):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    authenticator = Authenticator(password=PASSWORD)
    for candidate in ("", "x", PASSWORD[:-1], PASSWORD + "x", PASSWORD):
        body = callback_json("RHCI-DN-1-1", "t", password=candidate)
        fields = extract_fields(body)
        expected = "verified" if candidate == PASSWORD else ("unverified" if not candidate else "failed")
        assert authenticator.check(fields, body) == expected
    # every presented password went through hmac.compare_digest against the configured one
    assert [a for a, _ in calls] == [c.encode() for c in ("x", PASSWORD[:-1], PASSWORD + "x", PASSWORD)]
    assert all(b == PASSWORD.encode() for _, b in calls)
    # the portal's API key as well
    from receiver import portal as portal_module

    portal_calls = []
    monkeypatch.setattr(portal_module.hmac, "compare_digest", lambda a, b: portal_calls.append((a, b)) or real(a, b))
    from pipeline.config import load_config

    portal = portal_module.Portal(
        load_config(environ={}, overrides={"receiver.checkout_api_key": CHECKOUT_KEY}), engine=None
    )

    class FakeRequest:
        def __init__(self, headers):
            self.headers = headers

    assert portal._authorised(FakeRequest({"x-api-key": CHECKOUT_KEY})) and not portal._authorised(
        FakeRequest({"x-api-key": CHECKOUT_KEY[:-1]})
    )
    assert len(portal_calls) == 2
    figures.record(
        "7c. constant-time comparison",
        "spy on hmac.compare_digest for the webhook password and the checkout API key",
        len(calls) + len(portal_calls),
        {"comparisons not through hmac.compare_digest": 0},
    )


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


@pytest.mark.parametrize("db", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_injection_and_control_characters_are_stored_verbatim(db, request, tmp_path, figures):
    backend = request.getfixturevalue("sqlite_backend" if db == "sqlite" else "mysql_backend")
    reference = "RHCI-DN-1-20260114093000"
    add_donation_row(backend.engine, reference, add_patient_row(backend.engine))
    config = write_config(
        tmp_path / "serve.yaml", config_settings(backend, **{"receiver.checkout_api_key": CHECKOUT_KEY})
    )
    tables_before = sorted(sa_inspect(backend.engine).get_table_names())
    sent = []
    with ServerProcess(config, log_dir=tmp_path / "server") as server:
        for i, hostile in enumerate(HOSTILE):
            for field in (
                "utilityref",
                "externalreference",
                "reference",
                "transid",
                "transactionstatus",
                "operator",
                "msisdn",
                "mnoreference",
                "amount",
                "message",
            ):
                body = json.loads(callback_json(reference, f"inj{i}-{field}"))
                body[field] = hostile
                if field == "mnoreference":
                    body["clientId"] = f"inj{i}-{field}"
                raw = json.dumps(body, ensure_ascii=bool(i % 2)).encode()
                answer = post(server.callback_url, raw)
                assert answer.status_code in (200, 400, 404), (field, hostile, answer.status_code, answer.text)
                sent.append((raw, field, hostile, answer.status_code))
            # and through the portal's endpoints: refused, nothing breaks
            assert httpx.get(
                server.url + STATUS, params={"donation_id": hostile}, headers={"x-api-key": CHECKOUT_KEY}, timeout=10
            ).status_code in (400, 404)
    rows = {bytes(row.body): row for row in event_rows(backend.engine)}
    limits = {
        "utilityref": 255,
        "externalreference": 255,
        "reference": 255,
        "transid": 255,
        "transactionstatus": 255,
        "operator": 64,
    }
    column = {"reference": "transaction_ref", "transid": "transaction_ref", "transactionstatus": "status_raw"}
    checked = 0
    for raw, field, hostile, status in sent:
        row = rows.get(raw)
        assert row is not None, "a hostile callback's body was not stored byte for byte"
        if field in limits and status != 400:
            value = getattr(row, column.get(field, field))
            expected = hostile.strip()[: limits[field]] if field not in ("reference", "transid") else value
            if field == "transid":
                continue  # reference wins over transid
            assert value == expected, (field, value, expected)
            checked += 1
    assert sorted(sa_inspect(backend.engine).get_table_names()) == tables_before
    assert backend.scalar("SELECT COUNT(*) FROM donations") == 1 and backend.scalar(
        "SELECT COUNT(*) FROM payment_events"
    ) == len(sent)
    run_fold(backend.engine, backend.config(), datetime.now(UTC))
    assert check(backend.engine, backend.config()).differences == []
    figures.record(
        f"7e. SQL injection / control characters ({db})",
        f"{len(HOSTILE)} hostile strings in each of 10 callback fields and in status?donation_id",
        len(sent),
        {
            "bodies not stored byte for byte": 0,
            "typed fields not stored as given (clipped)": 0,
            "typed fields checked": checked,
            "tables dropped or rows deleted": 0,
            "5xx": 0,
        },
    )


def test_ip_allow_list_and_trusted_proxies(sqlite_backend, tmp_path, figures):
    backend = sqlite_backend
    reference = "RHCI-DN-1-20260114093000"
    add_donation_row(backend.engine, reference, add_patient_row(backend.engine))
    cases = [  # (trusted proxies, X-Forwarded-For, expected answer, expected stored remote_addr)
        (["127.0.0.1/32"], "10.1.2.3", 200, "10.1.2.3"),
        (["127.0.0.1/32"], "8.8.8.8", 403, "8.8.8.8"),
        (["127.0.0.1/32"], "10.1.2.3, 8.8.8.8", 403, "8.8.8.8"),  # a client-written left entry does not count
        (["127.0.0.1/32"], "8.8.8.8, 10.9.9.9", 200, "10.9.9.9"),
        (["127.0.0.1/32"], "garbage", 403, "garbage"),
        ([], "10.1.2.3", 403, "127.0.0.1"),  # no trusted proxy: the header is ignored
        (None, "10.1.2.3", 200, "127.0.0.1"),  # no allow-list: everyone
    ]
    results = []
    for n, (trusted, forwarded, expected, stored) in enumerate(cases):
        overrides = {"webhook.trusted_proxies": trusted or []}
        if trusted is not None:
            overrides["webhook.allowed_ips"] = ["10.0.0.0/8"]
        config = write_config(tmp_path / f"ip{n}.yaml", config_settings(backend, **overrides))
        with ServerProcess(config, log_dir=tmp_path / f"ip{n}") as server:
            answer = post(server.callback_url, callback_json(reference, f"ip{n}"), {"x-forwarded-for": forwarded})
        row = event_rows(backend.engine)[-1]
        results.append((answer.status_code, row.remote_addr))
        assert (answer.status_code, row.remote_addr) == (expected, stored), (
            cases[n],
            answer.status_code,
            row.remote_addr,
        )
    figures.record(
        "7f. IP allow-list and trusted proxies",
        "allowed/refused client, spoofed left-most X-Forwarded-For, untrusted proxy, no allow-list",
        len(cases),
        {"wrong decisions": 0, "refused callbacks stored": sum(1 for s, _ in results if s == 403)},
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
