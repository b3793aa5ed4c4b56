"""`running_sandbox(...)`: a sandbox on 127.0.0.1 (free port) for one `with` block, with in-process controls."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sandbox.server import SandboxServer
from sandbox.settings import (
    DEFAULT_API_KEY,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    SandboxSettings,
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for the processes a test, bench or demo starts)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process_group(process, timeout: float = 15.0) -> int | None:
    """Stop a subprocess started with start_new_session=True: SIGTERM to its group, wait, then SIGKILL."""
    import os
    import signal
    import subprocess

    if process.poll() is None:
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    return process.returncode


def wait_healthy(url: str, process, timeout: float, require_healthy: bool = True) -> str | None:
    """Poll GET {url}/healthz until it answers 200 (any answer when require_healthy is False).

    Returns None when ready, else why not ("exited with N", "healthz 503", "ConnectError"): the caller
    decides how to fail. Bounded by `timeout`; loopback only."""
    import time

    import requests

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with {process.returncode}"
        try:
            status = requests.get(url + "/healthz", timeout=2.0).status_code
            if status == 200 or not require_healthy:
                return None
            last = f"healthz {status}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    return f"not ready after {timeout:g}s ({last})"


class SandboxHandle:
    """What a test, the demo or a benchmark drives the sandbox with. Same state as the /_sandbox/ endpoints."""

    def __init__(self, server: SandboxServer):
        self._server = server
        self._app = server.app
        self.settings = server.app.settings
        self.url = server.url  # use as both azampay.auth_url and azampay.checkout_url
        self.host, self.port = server.host, server.port

    # --- inspection ---

    def stats(self) -> dict[str, int]:
        """Counters: tokens_issued, token_refusals, checkouts, checkout_rejections, status_calls, unauthorised,
        injected_failures, transactions."""
        return self._app.state.stats()

    @property
    def tokens_issued(self) -> int:
        return self.stats().get("tokens_issued", 0)

    def transactions(self) -> list[dict[str, Any]]:
        return self._app.state.transaction_list()

    def transaction(self, transaction_id: str) -> dict[str, Any]:
        return self._app.state.transactions[transaction_id].as_dict()

    def callbacks(self) -> list[dict[str, Any]]:
        """Every delivery attempt: {transaction_id, url, payload, http_status, error, sent_at}."""
        return self._app.callbacks.sent()

    def callback_count(self) -> int:
        return self._app.callbacks.count()

    def wait_for_callbacks(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until `count` deliveries were attempted (or timeout); returns all deliveries so far."""
        return self._app.callbacks.wait_for(count, timeout)

    def azampay_config(self, **overrides: Any):
        """An AzamPayConfig pointing at this sandbox with its credentials; overrides are AzamPayConfig fields."""
        from pipeline.sections import AzamPayConfig

        s = self.settings
        fields = {
            "auth_url": self.url,
            "checkout_url": self.url,
            "client_id": s.client_id,
            "client_secret": s.client_secret,
            "api_key": s.api_key,
            **overrides,
        }
        return AzamPayConfig(**fields)

    # --- control ---

    def set_outcome(self, msisdn: str, outcome: str) -> None:
        self._app.state.set_outcomes({msisdn: outcome})

    def set_outcomes(self, rules: dict[str, str]) -> None:
        self._app.state.set_outcomes(rules)

    def configure(self, **changes: Any) -> None:
        """callback_url, webhook_password, latency, status_latency, delay_seconds, default_outcome."""
        self._app.configure(**changes)

    def set_latency(self, seconds: float) -> None:
        self._app.configure(latency=seconds)

    def set_status_latency(self, seconds: float) -> None:
        """Only the transaction-status call answers `seconds` late; token and checkout stay fast."""
        self._app.configure(status_latency=seconds)

    def set_callback_url(self, url: str | None) -> None:
        self._app.configure(callback_url=url)

    def reject_token(self, times: int = 1) -> None:
        """The next `times` authenticated calls answer 401 whatever token they carry."""
        self._app.state.reject_token(times)

    def fail_next(self, times: int = 1, status: int = 503) -> None:
        """The next `times` AzamPay calls (any endpoint) answer `status`."""
        self._app.state.fail_next(times, status)

    def set_status_text(self, transaction_id: str, text: str) -> None:
        self._app.state.set_status_text(transaction_id, text)

    def seed_transaction(
        self,
        external_id: str,
        msisdn: str,
        provider: str,
        amount: str,
        outcome: str = "success",
        transaction_id: str | None = None,
    ) -> str:
        """Create a transaction without a checkout or callback (for poll benchmarks); returns its transactionId."""
        return self._app.state.add_transaction(
            external_id=external_id,
            msisdn=msisdn,
            provider=provider,
            amount=amount,
            outcome=outcome,
            transaction_id=transaction_id,
        ).transaction_id


@contextmanager
def running_sandbox(
    callback_url: str | None = None,
    webhook_password: str | None = None,
    client_id: str = DEFAULT_CLIENT_ID,
    client_secret: str = DEFAULT_CLIENT_SECRET,
    api_key: str = DEFAULT_API_KEY,
    outcomes: dict[str, str] | None = None,
    latency: float = 0.0,
    **settings: Any,
) -> Iterator[SandboxHandle]:
    """Extra keyword arguments are SandboxSettings fields (delay_seconds, token_ttl_seconds, status_path, ...)."""
    config = SandboxSettings(
        client_id=client_id,
        client_secret=client_secret,
        api_key=api_key,
        callback_url=callback_url,
        webhook_password=webhook_password,
        outcomes=dict(outcomes or {}),
        latency=latency,
        **settings,
    )
    server = SandboxServer(config, "127.0.0.1", 0).start()
    try:
        yield SandboxHandle(server)
    finally:
        server.stop()
