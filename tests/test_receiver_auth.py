"""The receiver's callback authentication: passwords, RSA signatures and client addresses (allow-list, trusted proxies)."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pipeline.events import signed_message
from receiver.app import CALLBACK_PATH, create_app
from tests.conftest import fixture_bytes
from tests.receiving import GUIDE, GUIDE_REF, JSON, callback, receiver
from tests.servers import add_donation, event_rows

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
