"""AzamPayClient against the real sandbox over loopback; `responses` only for answers the sandbox never gives."""

from __future__ import annotations

import json
import re
import socket
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import responses
from loguru import logger

from pipeline.azampay import AzamPayClient, StatusAnswer, map_status_text
from pipeline.config import AzamPayConfig, StatusApiConfig
from pipeline.errors import AzamPayAuthError, AzamPayUnavailable, AzamPayUnexpectedAnswer, AzamPayValidationError
from sandbox.testing import running_sandbox

FIXTURES = Path(__file__).parent / "fixtures" / "azampay"
MSISDN = "0628630936"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def sandbox():
    with running_sandbox() as handle:
        yield handle


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def client(sandbox, clock):
    return AzamPayClient(sandbox.azampay_config(get_retries=2), clock=clock, backoff_factor=0)


@pytest.fixture
def log_lines():
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    yield lines
    logger.remove(sink)


def checkout(client, msisdn=MSISDN, amount="25000", outcome=None):
    extra = {"sandbox_outcome": outcome} if outcome else None
    return client.mno_checkout(
        msisdn, Decimal(amount), "RHCI-DN-42-20260114093012", "Halopesa", additional_properties=extra
    )


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


# --- transport failures and retries -------------------------------------------------------------


def _closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def test_connection_refused_is_unavailable():
    port = _closed_port()
    config = AzamPayConfig(
        auth_url=f"http://127.0.0.1:{port}", checkout_url=f"http://127.0.0.1:{port}", client_secret="s3cr3t"
    )
    with pytest.raises(AzamPayUnavailable, match="connection failed") as caught:
        AzamPayClient(config).payment_partners()
    assert "s3cr3t" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_connect_timeout_is_unavailable():
    # A listener that never accepts, its backlog filled: further SYNs are dropped, so connect() times out.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        config = AzamPayConfig(
            auth_url=f"http://127.0.0.1:{port}",
            checkout_url=f"http://127.0.0.1:{port}",
            timeout_connect=0.2,
            timeout_read=0.2,
        )
        started = time.monotonic()
        with pytest.raises(AzamPayUnavailable, match="connect timeout after 0.2s"):
            AzamPayClient(config).payment_partners()
        assert time.monotonic() - started < 2
    finally:
        for sock in fillers + [listener]:
            sock.close()


def test_read_timeout_is_unavailable_and_post_is_not_resent(sandbox, clock):
    client = AzamPayClient(sandbox.azampay_config(timeout_read=0.2, get_retries=3), clock=clock, backoff_factor=0)
    client.payment_partners()  # token fetched before the latency starts
    sandbox.set_latency(0.5)
    with pytest.raises(AzamPayUnavailable, match="read timeout after 0.2s"):
        checkout(client)
    time.sleep(0.4)  # let the sandbox finish the slow request it is still holding
    assert sandbox.stats()["checkouts"] == 1


def test_get_is_retried_on_503_but_post_is_not(client, sandbox):
    txn = checkout(client).transaction_id
    sandbox.fail_next(times=2, status=503)
    assert client.transaction_status(txn, "Halopesa").status == "SUCCESS"  # get_retries=2 covers two 503s
    assert sandbox.stats()["injected_failures"] == 2

    sandbox.fail_next(times=1, status=503)
    with pytest.raises(AzamPayUnavailable, match="HTTP 503"):
        checkout(client)
    assert sandbox.stats()["injected_failures"] == 3
    assert sandbox.stats()["checkouts"] == 1  # only the first checkout ever ran


def test_get_gives_up_after_the_configured_retries(client, sandbox):
    client.payment_partners()  # token first: fail_next hits every endpoint
    sandbox.fail_next(times=10, status=502)
    with pytest.raises(AzamPayUnavailable, match="HTTP 502"):
        client.transaction_status("0" * 32, "Mpesa")
    assert sandbox.stats()["injected_failures"] == 3  # first try + get_retries=2


def test_token_post_is_not_resent_on_503(sandbox, clock):
    client = AzamPayClient(sandbox.azampay_config(get_retries=3), clock=clock, backoff_factor=0)
    sandbox.fail_next(times=1, status=503)
    with pytest.raises(AzamPayUnavailable, match="token: HTTP 503"):
        client.payment_partners()
    assert sandbox.stats()["injected_failures"] == 1
    assert sandbox.tokens_issued == 0


def test_retry_policy_never_resends_a_post_after_a_connection_error():
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    from pipeline.azampay import _GetOnlyRetry

    retry = _GetOnlyRetry(total=3, allowed_methods=frozenset({"GET"}))
    error = NewConnectionError(None, "refused")
    assert retry.increment("GET", "/x", error=error).total == 2
    with pytest.raises(MaxRetryError):
        retry.increment("POST", "/x", error=error)


def test_no_secret_or_token_in_logs_or_errors(sandbox, clock, log_lines):
    client = AzamPayClient(sandbox.azampay_config(get_retries=0), clock=clock, backoff_factor=0)
    checkout(client)
    sandbox.reject_token(times=2)
    errors = []
    try:
        client.payment_partners()
    except AzamPayAuthError as exc:
        errors.append(str(exc))
    sandbox.fail_next(times=1)
    try:
        client.payment_partners()
    except AzamPayUnavailable as exc:
        errors.append(str(exc))
    assert len(errors) == 2
    secrets = [sandbox.settings.client_secret, sandbox.settings.api_key, "sbx."]  # sandbox tokens start with sbx.
    text = "\n".join(log_lines + errors)
    assert log_lines  # the test would prove nothing if nothing was logged
    assert not [s for s in secrets if s in text]


def test_a_request_that_cannot_be_sent_is_a_typed_error_without_the_key(sandbox):
    """A key pasted with a typographic quote is not latin-1: requests raises UnicodeEncodeError deep inside.
    It must surface as an AzamPayError that carries neither the key nor a chained traceback with headers."""
    key = "api-key-with-\u2019-quote"
    with AzamPayClient(sandbox.azampay_config(api_key=key), backoff_factor=0) as bad_client:
        with pytest.raises(AzamPayUnexpectedAnswer) as caught:
            bad_client.transaction_status("0" * 32, "Mpesa")
    assert key not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# --- the environment -----------------------------------------------------------------------------------


@pytest.fixture
def proxy_environment(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def test_a_netrc_entry_for_azampay_does_not_replace_the_bearer_token(sandbox, clock, tmp_path, proxy_environment):
    """requests would send a ~/.netrc login for the host as Basic auth over the Bearer token (every call 401)."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password elsewhere\n")
    netrc.chmod(0o600)
    proxy_environment.setenv("NETRC", str(netrc))
    with AzamPayClient(sandbox.azampay_config(), clock=clock) as client:
        transaction = checkout(client).transaction_id
        assert client.transaction_status(transaction, "Halopesa").status == "SUCCESS"


def test_the_proxy_in_the_environment_is_used(sandbox, clock, proxy_environment):
    from pipeline.errors import AzamPayUnavailable

    proxy_environment.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")
    with AzamPayClient(sandbox.azampay_config(get_retries=0), clock=clock, backoff_factor=0) as client:
        with pytest.raises(AzamPayUnavailable):
            client.payment_partners()


def test_no_proxy_and_the_ca_bundle_are_read_once_at_construction(sandbox, clock, tmp_path, proxy_environment):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    proxy_environment.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")
    proxy_environment.setenv("NO_PROXY", "127.0.0.1")
    proxy_environment.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    with AzamPayClient(sandbox.azampay_config(), clock=clock) as client:
        assert client._session.verify == str(bundle)
        assert client.payment_partners()  # loopback is in NO_PROXY: reached directly
        proxy_environment.delenv("NO_PROXY")  # the environment is not read again per call
        assert client.payment_partners()
