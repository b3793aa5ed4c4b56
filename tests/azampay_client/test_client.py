"""AzamPayClient against the real sandbox over loopback: the happy path, the token, validation, status mapping.

`responses` only for answers the sandbox never gives; transport failures and the environment are
test_transport.py.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import responses

from pipeline.azampay import AzamPayClient, StatusAnswer, map_status_text
from pipeline.errors import AzamPayAuthError, AzamPayUnexpectedAnswer, AzamPayValidationError
from pipeline.sections import AzamPayConfig, StatusApiConfig
from sandbox.testing import running_sandbox
from tests.azampay_client.helpers import FIXTURES, MSISDN, checkout

# --- happy path ---------------------------------------------------------------------------------


def test_checkout_then_status_round_trip(client, sandbox):
    answer = checkout(client, amount="25000.50")
    assert re.fullmatch(r"[0-9a-f]{32}", answer.transaction_id)
    assert answer.http_status == 200
    assert json.loads(answer.raw)["transactionId"] == answer.transaction_id
    assert sandbox.transaction(answer.transaction_id)["amount"] == "25000.50"  # sent as a string, unrounded

    status = client.transaction_status(answer.transaction_id, "Halopesa")
    assert status == StatusAnswer("SUCCESS", "Transaction successful.", status.raw, 200)
    assert json.loads(status.raw) == json.loads((FIXTURES / "status_success.json").read_bytes())


def test_amount_must_not_be_a_float(client, sandbox):
    with pytest.raises(TypeError):
        client.mno_checkout(MSISDN, 1000.0, "RHCI-DN-1-20260101000000", "Mpesa")
    assert sandbox.stats().get("checkouts", 0) == 0


def test_payment_partners_have_the_documented_codes(client):
    partners = client.payment_partners()
    assert {p["partnerName"]: p["provider"] for p in partners} == {
        "Airtel": 2,
        "Tigo": 3,
        "Halopesa": 4,
        "Azampesa": 5,
        "Mpesa": 10,
    }


def test_status_path_and_parameter_names_come_from_config(clock):
    with running_sandbox(status_path="/v2/txn/status", reference_param="ref", provider_param="mno") as sb:
        status = StatusApiConfig(path="/v2/txn/status", reference_param="ref", provider_param="mno")
        client = AzamPayClient(sb.azampay_config(status=status), clock=clock)
        txn = checkout(client).transaction_id
        assert client.transaction_status(txn, "Halopesa").status == "SUCCESS"
        default_client = AzamPayClient(sb.azampay_config(), clock=clock)
        with pytest.raises(AzamPayUnexpectedAnswer):  # 404 from the sandbox: wrong path
            default_client.transaction_status(txn, "Halopesa")


# --- token --------------------------------------------------------------------------------------


def test_token_is_cached_until_expire_minus_margin(client, sandbox, clock):
    checkout(client)
    client.payment_partners()
    assert sandbox.tokens_issued == 1

    ttl = timedelta(seconds=sandbox.settings.token_ttl_seconds)
    margin = timedelta(seconds=client.config.token_margin_seconds)
    clock.now += ttl - margin - timedelta(seconds=5)
    client.payment_partners()
    assert sandbox.tokens_issued == 1

    clock.now += timedelta(seconds=10)  # now past expire - margin
    client.payment_partners()
    assert sandbox.tokens_issued == 2
    clock.now = datetime.now(UTC)  # the sandbox dates the new token by real time
    client.payment_partners()
    assert sandbox.tokens_issued == 2


def test_bad_credentials_423_raise_auth_error_without_the_secret(sandbox, clock, log_lines):
    config = sandbox.azampay_config(client_secret="wrong-secret-value")
    with pytest.raises(AzamPayAuthError) as caught:
        AzamPayClient(config, clock=clock).payment_partners()
    message = str(caught.value)
    assert "423" in message and "not valid" in message
    assert "wrong-secret-value" not in message
    assert sandbox.stats()["token_refusals"] == 1
    assert not any("wrong-secret-value" in line for line in log_lines)


def test_token_success_false_is_an_auth_error():
    config = AzamPayConfig(auth_url="http://127.0.0.1:9", checkout_url="http://127.0.0.1:9", client_secret="s3cr3t")
    body = {"data": None, "message": "App disabled", "success": False, "statusCode": 200}
    with responses.RequestsMock() as mock:
        mock.post("http://127.0.0.1:9/AppRegistration/GenerateToken", json=body, status=200)
        with pytest.raises(AzamPayAuthError, match="App disabled"):
            AzamPayClient(config).payment_partners()


def test_token_answer_without_access_token_is_unexpected():
    config = AzamPayConfig(auth_url="http://127.0.0.1:9", checkout_url="http://127.0.0.1:9")
    with responses.RequestsMock() as mock:
        mock.post("http://127.0.0.1:9/AppRegistration/GenerateToken", json={"success": True, "data": {}}, status=200)
        with pytest.raises(AzamPayUnexpectedAnswer, match="accessToken"):
            AzamPayClient(config).payment_partners()


def test_401_refreshes_the_token_once_and_retries(client, sandbox):
    client.payment_partners()
    sandbox.reject_token(times=1)
    answer = checkout(client)
    assert sandbox.tokens_issued == 2
    assert sandbox.stats()["checkouts"] == 1  # the rejected attempt never reached checkout
    assert answer.transaction_id in {t["transaction_id"] for t in sandbox.transactions()}


def test_401_after_the_refresh_is_an_auth_error(client, sandbox):
    sandbox.reject_token(times=2)
    with pytest.raises(AzamPayAuthError, match="after a token refresh"):
        checkout(client)
    assert sandbox.tokens_issued == 2  # exactly one refresh, no loop
    assert sandbox.stats().get("checkouts", 0) == 0


def test_wrong_api_key_is_rejected_even_with_a_valid_token(sandbox, clock):
    client = AzamPayClient(sandbox.azampay_config(api_key="not-the-key"), clock=clock)
    with pytest.raises(AzamPayAuthError) as caught:
        client.payment_partners()
    assert "not-the-key" not in str(caught.value)


# --- validation ---------------------------------------------------------------------------------


def test_checkout_400_problem_details_become_validation_error_with_fields(client, sandbox):
    with pytest.raises(AzamPayValidationError) as caught:
        client.mno_checkout("12345", Decimal("0"), "RHCI-DN-1-20260101000000", "Mpesa")
    assert set(caught.value.fields) == {"accountNumber", "amount"}
    assert caught.value.fields["amount"] == ["The amount must be greater than 0."]
    assert "One or more validation errors occurred." in str(caught.value)
    assert sandbox.stats()["checkout_rejections"] == 1


def test_checkout_unknown_provider_is_rejected(client):
    with pytest.raises(AzamPayValidationError) as caught:
        client.mno_checkout(MSISDN, Decimal("1000"), "RHCI-DN-1-20260101000000", "Vodacom")
    assert list(caught.value.fields) == ["provider"]


def test_checkout_success_false_is_a_validation_error():
    config = AzamPayConfig(auth_url="http://127.0.0.1:9", checkout_url="http://127.0.0.1:9")
    token = json.loads((FIXTURES / "token_success.json").read_bytes())
    with responses.RequestsMock() as mock:
        mock.post("http://127.0.0.1:9/AppRegistration/GenerateToken", json=token)
        mock.post("http://127.0.0.1:9/azampay/mno/checkout", json={"success": False, "message": "Duplicate externalId"})
        with pytest.raises(AzamPayValidationError, match="Duplicate externalId") as caught:
            AzamPayClient(config).mno_checkout(MSISDN, Decimal("1000"), "RHCI-DN-1-20260101000000", "Mpesa")
        assert caught.value.fields == {}
        sent = json.loads(mock.calls[1].request.body)
        assert sent["amount"] == "1000" and isinstance(sent["amount"], str)
        assert mock.calls[1].request.headers["Authorization"] == f"Bearer {token['data']['accessToken']}"
        assert "X-API-KEY" in mock.calls[1].request.headers


def test_unparseable_status_body_is_unexpected():
    config = AzamPayConfig(auth_url="http://127.0.0.1:9", checkout_url="http://127.0.0.1:9")
    token = json.loads((FIXTURES / "token_success.json").read_bytes())
    with responses.RequestsMock() as mock:
        mock.post("http://127.0.0.1:9/AppRegistration/GenerateToken", json=token)
        mock.get(re.compile(r"http://127\.0\.0\.1:9/azampay/gettransactionstatus.*"), body="<html>gateway</html>")
        with pytest.raises(AzamPayUnexpectedAnswer, match="not JSON"):
            AzamPayClient(config).transaction_status("abc", "Mpesa")


# --- status mapping -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Transaction successful.", "SUCCESS"),
        ("SUCCESS", "SUCCESS"),
        ("Payment completed", "SUCCESS"),
        ("Transaction failed.", "FAILED"),
        ("failure", "FAILED"),
        ("Transaction cancelled.", "FAILED"),
        ("Request expired", "FAILED"),
        ("Transaction pending.", "PENDING"),
        ("still processing", "PENDING"),
        ("Reversal queued.", "UNKNOWN"),
        ("unsuccessfully", "UNKNOWN"),  # word boundary: not a success
        # negated or mixed sentences must never read as a success (a success moves money)
        ("Transaction not successful.", "FAILED"),
        ("Payment declined", "FAILED"),
        ("Transaction failed: completed with error", "FAILED"),
        ("Payment could not be completed", "UNKNOWN"),
        ("Not completed yet, pending", "PENDING"),
        ("Request successful.", "UNKNOWN"),  # the envelope's message, not the transaction's status
        ("Transaction completed with errors", "UNKNOWN"),
        ("", "UNKNOWN"),
        (None, "UNKNOWN"),
    ],
)
def test_map_status_text_defaults(text, expected):
    assert map_status_text(text, StatusApiConfig()) == expected


def test_map_status_text_order_and_custom_patterns():
    config = StatusApiConfig(success_patterns=[r"^paid$"], failed_patterns=[r"paid"], pending_patterns=[r"queued"])
    assert map_status_text("PAID", config) == "FAILED"  # failed is tried first, case-insensitive
    assert map_status_text("unpaid", config) == "FAILED"
    only_success = StatusApiConfig(success_patterns=[r"^paid$"], failed_patterns=[r"^unpaid$"], pending_patterns=[])
    assert map_status_text("PAID", only_success) == "SUCCESS"
    assert map_status_text("Reversal queued.", config) == "PENDING"


@pytest.mark.parametrize(
    "outcome, status, text",
    [
        ("failure", "FAILED", "Transaction failed."),
        ("pending", "PENDING", "Transaction pending."),
        ("unknown_status", "UNKNOWN", "Reversal queued."),
    ],
)
def test_status_reflects_the_sandbox_outcome(client, outcome, status, text):
    txn = checkout(client, outcome=outcome).transaction_id
    answer = client.transaction_status(txn, "Halopesa")
    assert (answer.status, answer.text) == (status, text)


def test_status_of_an_unknown_transaction_is_unknown_not_failed(client):
    answer = client.transaction_status("0" * 32, "Mpesa")
    assert answer.status == "UNKNOWN"
    assert answer.text == "Transaction not found."
    assert json.loads(answer.raw)["success"] is False
