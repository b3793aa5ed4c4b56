"""The receiver's answers, storage and authentication, on a real SQLite file and on real MariaDB."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from loguru import logger
from starlette.testclient import TestClient

from pipeline.events import signed_message
from pipeline.logs import configure_logging, secrets_of
from receiver.app import CALLBACK_PATH, create_app
from tests.conftest import fixture_bytes
from tests.servers import add_donation, event_rows

JSON = {"content-type": "application/json"}
GUIDE = "callback_guide_example.json"
GUIDE_REF = "RHCI-DN-999-20251219120000"


@contextlib.contextmanager
def receiver(backend, client=("127.0.0.1", 50000), **overrides):
    """A running receiver app (lifespan started: writer thread up) on the backend's database."""
    app = create_app(backend.config(**overrides))
    with TestClient(app, client=client) as test_client:
        yield test_client


def callback(**changes) -> bytes:
    data = json.loads(fixture_bytes(GUIDE))
    data.update(changes)
    return json.dumps(data).encode()


# --- every recorded payload, byte-exact, with its typed columns ---------------------------------

EXPECTED = {
    "callback_guide_example.json": dict(
        utilityref=GUIDE_REF,
        externalreference=GUIDE_REF,
        donation_hint=None,
        transaction_ref="TEST123",
        status_raw="success",
        status="SUCCESS",
        amount=Decimal("1000.00"),
        operator="Mpesa",
        msisdn="255789123456",
    ),
    "callback_live_shape_success.json": dict(
        utilityref="RHCI-DN-42-20260114093012",
        externalreference="4f1c0d9a7be2443c9e51a0d6c2b8e317",
        donation_hint=None,
        transaction_ref="4f1c0d9a7be2443c9e51a0d6c2b8e317",
        status_raw="success",
        status="SUCCESS",
        amount=Decimal("25000.00"),
        operator="Halopesa",
        msisdn="255628630936",
    ),
    "callback_live_shape_minimal.json": dict(
        utilityref="RHCI-DN-43-20260114101545",
        externalreference="9c3b1e77d0a54f2a8e6f4b2d1c0a9e88",
        donation_hint=None,
        transaction_ref="9c3b1e77d0a54f2a8e6f4b2d1c0a9e88",
        status_raw="success",
        status="SUCCESS",
        amount=Decimal("60000.00"),
        operator="Mpesa",
        msisdn="255758285812",
    ),
    "callback_failure.json": dict(
        utilityref="RHCI-DN-44-20260114111200",
        externalreference="a7e2c9d14b3f4e6a8c1d0b9e2f3a4c5d",
        donation_hint=None,
        transaction_ref="a7e2c9d14b3f4e6a8c1d0b9e2f3a4c5d",
        status_raw="failure",
        status="FAILED",
        amount=Decimal("5000.00"),
        operator="Airtel",
        msisdn="255688123456",
    ),
    "callback_failed_spelling.json": dict(
        utilityref="RHCI-DN-45-20260114112233",
        externalreference="0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e",
        donation_hint="45",
        transaction_ref="0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e",
        status_raw="FAILED",
        status="FAILED",
        amount=Decimal("10000.00"),
        operator="Tigo",
        msisdn="255655123456",
    ),
}


def test_every_fixture_has_expectations():
    from tests.conftest import FIXTURES

    assert sorted(p.name for p in FIXTURES.glob("callback_*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_payload_stored_byte_exact_with_typed_fields(backend, name):
    raw = fixture_bytes(name)
    before = datetime.now(UTC)
    with receiver(backend) as client:
        answer = client.post(
            CALLBACK_PATH, content=raw, headers={**JSON, "user-agent": "AzamPay/1", "cookie": "secret=1"}
        )
    after = datetime.now(UTC)
    assert answer.status_code == 404  # no donation exists
    [row] = event_rows(backend.engine)
    assert row.body == raw
    assert row.body_sha256 == hashlib.sha256(raw).hexdigest()
    assert row.source == "callback" and row.auth == "n/a" and row.parse_error is None
    assert row.content_type == "application/json" and row.remote_addr == "127.0.0.1"
    headers = json.loads(row.headers)
    assert headers["user-agent"] == "AzamPay/1" and "cookie" not in headers
    assert before <= row.received_at <= after and row.received_at.tzinfo is not None
    for column, value in EXPECTED[name].items():
        assert getattr(row, column) == value, column


def test_guide_test_request_404_unknown_then_200_known(backend):
    raw = fixture_bytes(GUIDE)
    with receiver(backend) as client:
        first = client.post(CALLBACK_PATH, content=raw, headers=JSON)
        assert first.status_code == 404
        add_donation(backend.engine, GUIDE_REF, donation_id=999)
        second = client.post(CALLBACK_PATH, content=raw, headers=JSON)
        assert second.status_code == 200 and second.json()["status"] == "received"
    rows = event_rows(backend.engine)
    assert [r.body for r in rows] == [raw, raw]
    # receiving never changes donation state
    assert backend.scalar("SELECT status FROM donations WHERE id = 999") == "PENDING"


@pytest.mark.parametrize("how", ["utilityref", "donation_hint", "transaction_id"])
def test_known_by_each_resolution_key(backend, how):
    if how == "utilityref":
        add_donation(backend.engine, "RHCI-DN-42-20260114093012")
    elif how == "donation_hint":  # a weak key: the donation stores no reference, and the callback's facts agree
        add_donation(backend.engine, None, donation_id=45, msisdn="255655123456", provider="Tigo")
    else:
        add_donation(backend.engine, "RHCI-DN-7-x", transaction_id="4f1c0d9a7be2443c9e51a0d6c2b8e317")
    name = "callback_failed_spelling.json" if how == "donation_hint" else "callback_live_shape_success.json"
    raw = fixture_bytes(name)
    if how == "donation_hint":  # a transaction id it stated could not be checked before a checkout stored one
        raw = json.dumps({**json.loads(raw), "reference": None, "externalreference": None, "transid": None}).encode()
    with receiver(backend) as client:
        assert client.post(CALLBACK_PATH, content=raw, headers=JSON).status_code == 200


def test_path_without_trailing_slash_no_redirect(backend):
    with receiver(backend) as client:
        answer = client.post(
            CALLBACK_PATH.rstrip("/"), content=fixture_bytes(GUIDE), headers=JSON, follow_redirects=False
        )
        assert answer.status_code == 404
        assert client.get(CALLBACK_PATH).status_code == 405
    assert len(event_rows(backend.engine)) == 1


# --- invalid requests are answered 4xx and still stored ------------------------------------------


@pytest.mark.parametrize(
    "raw, error",
    [
        (b'{"transactionstatus": "success", ', "invalid JSON"),
        (b"[1, 2]", "schema"),
        (b'{"amount": "1"}', "transactionstatus"),
    ],
)
def test_bad_json_or_schema_400_stored(backend, raw, error):
    with receiver(backend) as client:
        answer = client.post(CALLBACK_PATH, content=raw, headers=JSON)
    assert answer.status_code == 400
    [row] = event_rows(backend.engine)
    assert row.body == raw and error in row.parse_error and row.status is None


def test_not_json_415_stored(backend):
    raw = b"transactionstatus=success&utilityref=RHCI-DN-1-20260101000000"
    with receiver(backend) as client:
        answer = client.post(CALLBACK_PATH, content=raw, headers={"content-type": "application/x-www-form-urlencoded"})
        assert answer.status_code == 415
        assert (
            client.post(
                CALLBACK_PATH, content=fixture_bytes(GUIDE), headers={"content-type": "application/json; charset=utf-8"}
            ).status_code
            == 404
        )
    rows = event_rows(backend.engine)
    assert rows[0].body == raw and "content type" in rows[0].parse_error and rows[0].utilityref is None
    assert rows[1].parse_error is None


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_413_stores_prefix(backend, chunked):
    raw = callback(message="x" * 5000)
    content = (raw[i : i + 700] for i in range(0, len(raw), 700)) if chunked else raw
    with receiver(backend, **{"webhook.max_body_bytes": 1024}) as client:
        answer = client.post(CALLBACK_PATH, content=content, headers=JSON)
    assert answer.status_code == 413
    [row] = event_rows(backend.engine)
    assert row.body == raw[:1024]
    assert "over the limit of 1024 bytes" in row.parse_error and row.status is None


def test_body_at_the_limit_is_accepted(backend):
    raw = callback()
    raw = raw[:-1] + b" " * (1024 - len(raw)) + b"}"
    assert len(raw) == 1024
    with receiver(backend, **{"webhook.max_body_bytes": 1024}) as client:
        assert client.post(CALLBACK_PATH, content=raw, headers=JSON).status_code == 404


# --- credentials -------------------------------------------------------------------------------


def test_password_wrong_absent_right(backend):
    add_donation(backend.engine, GUIDE_REF)
    with receiver(backend, **{"webhook.password": "s3cret-hook-pw"}) as client:
        wrong = client.post(CALLBACK_PATH, content=callback(password="guess"), headers=JSON)
        absent = client.post(CALLBACK_PATH, content=fixture_bytes(GUIDE), headers=JSON)  # "password": ""
        missing = client.post(CALLBACK_PATH, content=callback(password=None), headers=JSON)
        right = client.post(CALLBACK_PATH, content=callback(password="s3cret-hook-pw"), headers=JSON)
        bad_json = client.post(CALLBACK_PATH, content=b'{"password": "s3cret-hook-pw"', headers=JSON)
    assert [wrong.status_code, absent.status_code, missing.status_code, right.status_code, bad_json.status_code] == [
        403,
        202,
        202,
        200,
        400,
    ]
    assert [r.auth for r in event_rows(backend.engine)] == [
        "failed",
        "unverified",
        "unverified",
        "verified",
        "unverified",
    ]


def test_no_credential_configured_is_na_even_with_password_field(backend):
    with receiver(backend) as client:
        assert client.post(CALLBACK_PATH, content=callback(password="anything"), headers=JSON).status_code == 404
    assert event_rows(backend.engine)[0].auth == "n/a"


@pytest.fixture(scope="module")
def rsa_keys():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return key, other, pem


def _signed(key, **changes) -> bytes:
    data = json.loads(callback(**changes))
    message = signed_message(json.dumps(data).encode())
    data["signature"] = base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()
    return json.dumps(data).encode()


def test_rsa_signature_valid_invalid_absent(backend, rsa_keys, tmp_path):
    key, other, pem = rsa_keys
    tampered = json.loads(_signed(key))
    tampered["transactionstatus"] = "failure"  # the signature covered "success"
    pem_file = tmp_path / "azampay.pem"
    pem_file.write_text(pem)
    with receiver(backend, **{"webhook.signature_public_key_pem": str(pem_file)}) as client:
        valid = client.post(CALLBACK_PATH, content=_signed(key), headers=JSON)
        wrong_key = client.post(CALLBACK_PATH, content=_signed(other), headers=JSON)
        altered = client.post(CALLBACK_PATH, content=json.dumps(tampered).encode(), headers=JSON)
        garbage = client.post(CALLBACK_PATH, content=callback(signature="not base64!!"), headers=JSON)
        absent = client.post(CALLBACK_PATH, content=fixture_bytes(GUIDE), headers=JSON)
    assert [a.status_code for a in (valid, wrong_key, altered, garbage, absent)] == [404, 403, 403, 403, 202]
    assert [r.auth for r in event_rows(backend.engine)] == ["signed", "failed", "failed", "failed", "unverified"]


def test_either_configured_credential_verifies(backend, rsa_keys):
    key, other, pem = rsa_keys
    with receiver(backend, **{"webhook.password": "pw-1234", "webhook.signature_public_key_pem": pem}) as client:
        by_password = client.post(CALLBACK_PATH, content=_signed(other, password="pw-1234"), headers=JSON)
        by_signature = client.post(CALLBACK_PATH, content=_signed(key, password="wrong"), headers=JSON)
        neither = client.post(CALLBACK_PATH, content=_signed(other, password="wrong"), headers=JSON)
    assert [a.status_code for a in (by_password, by_signature, neither)] == [404, 404, 403]
    assert [r.auth for r in event_rows(backend.engine)] == ["verified", "signed", "failed"]


def test_bad_public_key_is_a_config_error(backend):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="signature_public_key_pem"):
        create_app(
            backend.config(
                **{"webhook.signature_public_key_pem": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"}
            )
        )


# --- client addresses ----------------------------------------------------------------------------


def test_ip_allow_list(backend):
    settings = {"webhook.allowed_ips": ["203.0.113.0/24", "198.51.100.9"]}
    with receiver(backend, client=("203.0.113.5", 4000), **settings) as client:
        assert client.post(CALLBACK_PATH, content=fixture_bytes(GUIDE), headers=JSON).status_code == 404
    with receiver(backend, client=("198.51.100.9", 4000), **settings) as client:
        assert client.post(CALLBACK_PATH, content=fixture_bytes(GUIDE), headers=JSON).status_code == 404
    with receiver(backend, client=("192.0.2.1", 4000), **settings) as client:
        refused = client.post(
            CALLBACK_PATH, content=fixture_bytes(GUIDE), headers={**JSON, "x-forwarded-for": "203.0.113.5"}
        )
        assert refused.status_code == 403
    rows = event_rows(backend.engine)
    assert [(r.remote_addr, r.auth) for r in rows] == [
        ("203.0.113.5", "n/a"),
        ("198.51.100.9", "n/a"),
        ("192.0.2.1", "failed"),
    ]
    assert "192.0.2.1 not in webhook.allowed_ips" in rows[2].parse_error
    assert rows[2].body == fixture_bytes(GUIDE) and rows[2].utilityref == GUIDE_REF  # kept, typed, untrusted


def test_forwarded_for_only_from_trusted_proxies(backend):
    settings = {"webhook.allowed_ips": ["203.0.113.0/24"], "webhook.trusted_proxies": ["10.0.0.0/8"]}
    raw = fixture_bytes(GUIDE)
    cases = [
        ("10.0.0.2", "198.51.100.7, 203.0.113.5", 404, "203.0.113.5"),  # right-most untrusted hop
        ("10.0.0.2", "203.0.113.5, 10.0.0.9", 404, "203.0.113.5"),  # a second trusted proxy is skipped
        ("10.0.0.2", "203.0.113.5, 198.51.100.7", 403, "198.51.100.7"),  # a spoofed left-most entry does not help
        ("192.0.2.1", "203.0.113.5", 403, "192.0.2.1"),  # untrusted peer: header ignored
        ("10.0.0.2", None, 403, "10.0.0.2"),
    ]
    for peer, forwarded, status, _ in cases:
        headers = dict(JSON)
        if forwarded:
            headers["x-forwarded-for"] = forwarded
        with receiver(backend, client=(peer, 4000), **settings) as client:
            assert client.post(CALLBACK_PATH, content=raw, headers=headers).status_code == status, (peer, forwarded)
    assert [r.remote_addr for r in event_rows(backend.engine)] == [case[3] for case in cases]


# --- health and logs ---------------------------------------------------------------------------


def test_healthz(backend, tmp_path):
    with receiver(backend) as client:
        answer = client.get("/healthz")
        assert answer.status_code == 200 and answer.json() == {"status": "ok"}
    unreachable = backend.config(**{"database.url": f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}"})
    with TestClient(create_app(unreachable)) as client:
        assert client.get("/healthz").status_code == 503


@pytest.fixture
def log_dir(tmp_path):
    yield tmp_path / "logs"
    logger.remove()


def test_password_never_in_any_log(backend, log_dir, tmp_path):
    password = "Pw-7f3c9e1d-never-log-me"
    overrides = {"webhook.password": password, "logging.dir": str(log_dir)}
    config = backend.config(**overrides)
    configure_logging(config.logging, component="receiver", secrets=secrets_of(config), stderr_level=None)
    with receiver(backend, **overrides) as client:
        assert client.post(CALLBACK_PATH, content=callback(password=password), headers=JSON).status_code == 404
        assert client.post(CALLBACK_PATH, content=callback(password=password + "x"), headers=JSON).status_code == 403
        assert (
            client.post(CALLBACK_PATH, content=b'{"password": "%s", ' % password.encode(), headers=JSON).status_code
            == 400
        )
        assert (
            client.post(
                CALLBACK_PATH, content=b"password=%s" % password.encode(), headers={"content-type": "text/plain"}
            ).status_code
            == 415
        )
        assert (
            client.post(
                CALLBACK_PATH, content=b"x %s y" % password.encode(), headers={"content-type": "text/plain"}
            ).status_code
            == 415
        )
    # ... and during an outage, where the error path logs too
    outage = {**overrides, "database.url": f"sqlite:///{tmp_path / 'gone' / 'x.db'}"}
    with receiver(backend, **outage) as client:
        assert client.post(CALLBACK_PATH, content=callback(password=password), headers=JSON).status_code == 503
    logger.remove()
    files = [p for p in log_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"payments.log", "errors.log", "app.log"}
    text = "".join(p.read_text(errors="replace") for p in files)
    assert password not in text
    payments_log = (log_dir / "payments.log").read_text()
    assert payments_log.count("Received Azam Pay callback: {") >= 3
    assert "Error processing Azam Pay callback" in payments_log
    assert "Error processing Azam Pay callback" in (log_dir / "errors.log").read_text()
    # the guide's Issue 3 line, at the legacy view's level (tests/fixtures/legacy/payments.log has it as WARNING)
    assert "| WARNING  | receiver | Could not find donation from external_id: RHCI-DN-" in payments_log
