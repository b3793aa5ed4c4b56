"""Security 7, each test with its own store and server: signature forgeries never credit; credentials are
compared in constant time; SQL-injection and control-character strings are stored verbatim and harmless;
the IP allow-list and trusted proxies."""

from __future__ import annotations

import base64
import hmac
import json
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
from tests.reliability.helpers import add_donation_row, add_patient_row, callback_json, credits_per_donation
from tests.reliability.test_security import CHECKOUT_KEY, PASSWORD, STATUS
from tests.servers import ServerProcess, config_settings, event_rows, write_config

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


def post(url: str, body: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(url, content=body, headers={"content-type": "application/json", **(headers or {})}, timeout=15)


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
