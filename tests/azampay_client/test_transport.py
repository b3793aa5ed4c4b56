"""AzamPayClient transport: refused and timed-out connections, which calls are retried (never a POST), no
secret in logs or errors, and what it takes from the environment (proxies, netrc, CA bundle).
"""

from __future__ import annotations

import socket
import time

import pytest

from pipeline.azampay import AzamPayClient
from pipeline.errors import AzamPayAuthError, AzamPayUnavailable, AzamPayUnexpectedAnswer
from pipeline.sections import AzamPayConfig
from tests.azampay_client.helpers import checkout

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
