"""AzamPay HTTP client: token, MNO checkout, payment partners and transaction status.

Every error leaving this module is an AzamPayError whose message names the call and the cause but never a
token, client secret or API key. Transport exceptions are not chained (`from None`) because a requests
exception holds the prepared request, headers included.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import requests
from loguru import logger
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from pipeline.errors import (
    AzamPayAuthError,
    AzamPayUnavailable,
    AzamPayUnexpectedAnswer,
    AzamPayValidationError,
    ConfigError,
)
from pipeline.fold import Status
from pipeline.sections import AzamPayConfig, StatusApiConfig
from pipeline.times import parse_utc

TOKEN_PATH = "/AppRegistration/GenerateToken"
CHECKOUT_PATH = "/azampay/mno/checkout"
PARTNERS_PATH = "/api/v1/Partner/GetPaymentPartners"


@dataclass(frozen=True)
class CheckoutAnswer:
    transaction_id: str
    message: str
    raw: bytes
    http_status: int


@dataclass(frozen=True)
class StatusAnswer:
    status: Status
    text: str  # AzamPay's free-text `data` (or its `message` when it answered success:false)
    raw: bytes  # exact response body, stored as the poll event's payload
    http_status: int


@lru_cache(maxsize=32)
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    try:
        return tuple(re.compile(p, re.IGNORECASE) for p in patterns)
    except re.error as exc:
        raise ConfigError(f"invalid azampay.status pattern: {exc}") from None


def map_status_text(text: str | None, status_config: StatusApiConfig) -> Status:
    """Map the status call's free text to a status; the first match wins in the order failed, pending, success.

    SUCCESS moves money, so it is tried last and its default patterns match only whole known sentences:
    "Transaction not successful." or "could not be completed" must never read as a success. Anything
    unrecognised is UNKNOWN: no state change, an unknown_status anomaly."""
    if not text:
        return Status.UNKNOWN
    for status, patterns in (
        (Status.FAILED, status_config.failed_patterns),
        (Status.PENDING, status_config.pending_patterns),
        (Status.SUCCESS, status_config.success_patterns),
    ):
        if any(p.search(text) for p in _compiled(tuple(patterns))):
            return status
    return Status.UNKNOWN


class _GetOnlyRetry(Retry):
    """urllib3 retries connect errors for every method; a POST that may have reached AzamPay must never be resent."""

    def increment(self, method=None, url=None, *args, **kwargs):
        if method is not None and method.upper() not in (self.allowed_methods or ()):
            return Retry(total=0, raise_on_status=False).increment(method, url, *args, **kwargs)
        return super().increment(method, url, *args, **kwargs)


def _parse_expire(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return parse_utc(value)  # AzamPay's examples are UTC
    except ValueError:
        return None


def _json(response: requests.Response, what: str) -> Any:
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        raise AzamPayUnexpectedAnswer(
            f"{what}: HTTP {response.status_code} with a body that is not JSON ({len(response.content)} bytes)"
        ) from None


def _transport_error(exc: requests.RequestException, what: str, timeouts: tuple[float, float]) -> AzamPayUnavailable:
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    if isinstance(exc, requests.ConnectTimeout):
        return AzamPayUnavailable(f"{what}: connect timeout after {timeouts[0]:g}s")
    if isinstance(exc, requests.ReadTimeout) or "ReadTimeout" in type(reason).__name__:
        return AzamPayUnavailable(f"{what}: read timeout after {timeouts[1]:g}s")
    if isinstance(exc, requests.ConnectionError):
        return AzamPayUnavailable(f"{what}: connection failed ({type(reason or exc).__name__})")
    return AzamPayUnavailable(f"{what}: request failed ({type(exc).__name__})")


def _read_environment_once(session: requests.Session, urls: Iterable[str]) -> None:
    """What requests reads from the environment on every call, read once: the proxy for each AzamPay URL
    (NO_PROXY honoured) and the CA bundle. Then trust_env goes off, which also stops the ~/.netrc look-up.

    Per call, those look-ups were a quarter of a status call's CPU, and a netrc entry for AzamPay's host
    went out as Basic auth in place of the Bearer token (every call 401)."""
    for url in urls:
        parts = urlsplit(url)
        proxies = requests.utils.get_environ_proxies(url)
        proxy = proxies.get(parts.scheme, proxies.get("all"))
        if proxy and parts.hostname:
            session.proxies[f"{parts.scheme}://{parts.hostname}"] = proxy  # requests' per-host proxy key
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False


class AzamPayClient:
    """One client per process is enough; it is safe to share between threads (the token cache is locked)."""

    def __init__(
        self,
        config: AzamPayConfig,
        session: requests.Session | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        backoff_factor: float = 0.5,
    ):
        self.config = config
        self._clock = clock
        self._timeouts = (config.timeout_connect, config.timeout_read)
        self._owns_session = session is None
        self._session = session or requests.Session()
        if self._owns_session:
            _read_environment_once(self._session, (config.auth_url, config.checkout_url))
        retry = _GetOnlyRetry(
            total=config.get_retries,
            allowed_methods=frozenset({"GET"}),
            status_forcelist=(502, 503, 504),
            backoff_factor=backoff_factor,
            raise_on_status=False,  # the last 5xx answer is turned into AzamPayUnavailable below
            respect_retry_after_header=False,  # a Retry-After of hours would stall a poll worker; keep waits bounded
        )
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=32)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._token_lock = threading.Lock()
        self._token: str | None = None
        self._token_valid_until: datetime | None = None

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> AzamPayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- token -------------------------------------------------------------------------------------

    def _fetch_token(self) -> tuple[str, datetime | None]:
        what = "AzamPay token"
        body = {
            "appName": self.config.app_name,
            "clientId": self.config.client_id,
            "clientSecret": self.config.client_secret.get_secret_value(),
        }
        response = self._send("POST", f"{self.config.auth_url}{TOKEN_PATH}", what, json=body)
        if response.status_code >= 500:
            raise AzamPayUnavailable(f"{what}: HTTP {response.status_code}")
        data = _json(response, what) if response.content else {}
        message = data.get("message") if isinstance(data, dict) else None
        if response.status_code in (401, 403, 423) or (isinstance(data, dict) and data.get("success") is False):
            raise AzamPayAuthError(
                f"{what}: refused for app {self.config.app_name!r}, client id {self.config.client_id!r} "
                f"(HTTP {response.status_code}: {message or 'no message'})"
            )
        if response.status_code != 200 or not isinstance(data, dict):
            raise AzamPayUnexpectedAnswer(f"{what}: unexpected HTTP {response.status_code}")
        payload = data.get("data") if isinstance(data.get("data"), dict) else {}
        token = payload.get("accessToken")
        if not isinstance(token, str) or not token:
            raise AzamPayUnexpectedAnswer(f"{what}: answer has no data.accessToken")
        return token, _parse_expire(payload.get("expire"))

    def _get_token(self) -> str:
        with self._token_lock:
            now = self._clock()
            if self._token and self._token_valid_until and now < self._token_valid_until:
                return self._token
            token, expire = self._fetch_token()
            self._token = token
            # An unparseable expiry still lets this call use the token, but it is not cached.
            self._token_valid_until = expire - timedelta(seconds=self.config.token_margin_seconds) if expire else None
            logger.debug("AzamPay token refreshed, cached until {}", self._token_valid_until)
            return token

    def _drop_token(self, token: str) -> None:
        with self._token_lock:
            if self._token == token:  # another thread may already hold a fresh one
                self._token = None
                self._token_valid_until = None

    # --- transport ---------------------------------------------------------------------------------

    def _send(self, method: str, url: str, what: str, **kwargs: Any) -> requests.Response:
        started = time.perf_counter()
        try:
            response = self._session.request(method, url, timeout=self._timeouts, **kwargs)
        except requests.RequestException as exc:
            raise _transport_error(exc, what, self._timeouts) from None
        except (
            Exception
        ) as exc:  # e.g. a header that is not latin-1: the request (with its token) must not reach a traceback
            raise AzamPayUnexpectedAnswer(f"{what}: request could not be sent ({type(exc).__name__})") from None
        if response.status_code >= 300:  # only the unusual answers: the poller makes thousands of calls
            logger.debug(
                "{} -> HTTP {} in {:.0f} ms", what, response.status_code, (time.perf_counter() - started) * 1000
            )
        return response

    def _authorised(self, method: str, url: str, what: str, **kwargs: Any) -> requests.Response:
        """Send with Bearer token and X-API-KEY; on 401 refresh the token once and resend once."""
        api_key = self.config.api_key.get_secret_value()
        for _attempt in (1, 2):
            token = self._get_token()
            headers = {"Authorization": f"Bearer {token}", "X-API-KEY": api_key, "Accept": "application/json"}
            response = self._send(method, url, what, headers=headers, **kwargs)
            if response.status_code != 401:
                break
            self._drop_token(token)
        else:
            raise AzamPayAuthError(f"{what}: still unauthorised (HTTP 401) after a token refresh; check the API key")
        if response.status_code >= 500:
            raise AzamPayUnavailable(f"{what}: HTTP {response.status_code}")
        return response

    # --- calls -------------------------------------------------------------------------------------

    def mno_checkout(
        self,
        account_number: str,
        amount: Decimal,
        external_id: str,
        provider: str,
        currency: str = "TZS",
        additional_properties: dict[str, Any] | None = None,
    ) -> CheckoutAnswer:
        if not isinstance(amount, (Decimal, int)) or isinstance(amount, bool):
            raise TypeError("amount must be a Decimal")
        what = f"AzamPay checkout {external_id}"
        body = {
            "accountNumber": account_number,
            "amount": format(Decimal(amount), "f"),  # "f": never exponent notation such as 1E+3
            "currency": currency,
            "externalId": external_id,
            "provider": provider,
            "additionalProperties": additional_properties or {},
        }
        response = self._authorised("POST", f"{self.config.checkout_url}{CHECKOUT_PATH}", what, json=body)
        data = _json(response, what)
        if response.status_code == 400 and isinstance(data, dict):
            errors = data.get("errors") if isinstance(data.get("errors"), dict) else {}
            fields = {str(k): [str(m) for m in (v if isinstance(v, list) else [v])] for k, v in errors.items()}
            message = data.get("title") or data.get("message") or "validation failed"
            detail = "; ".join(f"{k}: {' '.join(v)}" for k, v in fields.items())
            raise AzamPayValidationError(f"{what}: {message}" + (f" ({detail})" if detail else ""), fields=fields)
        if response.status_code != 200 or not isinstance(data, dict):
            raise AzamPayUnexpectedAnswer(f"{what}: unexpected HTTP {response.status_code}")
        if data.get("success") is not True:
            raise AzamPayValidationError(f"{what}: refused: {data.get('message') or 'no message'}")
        transaction_id = data.get("transactionId")
        if not isinstance(transaction_id, str) or not transaction_id:
            raise AzamPayUnexpectedAnswer(f"{what}: success answer without transactionId")
        return CheckoutAnswer(transaction_id, str(data.get("message") or ""), response.content, response.status_code)

    def payment_partners(self) -> list[dict[str, Any]]:
        what = "AzamPay payment partners"
        response = self._authorised("GET", f"{self.config.checkout_url}{PARTNERS_PATH}", what)
        data = _json(response, what)
        if response.status_code != 200 or not isinstance(data, list):
            raise AzamPayUnexpectedAnswer(f"{what}: unexpected HTTP {response.status_code} or body")
        return data

    def transaction_status(self, transaction_id: str, provider: str) -> StatusAnswer:
        status_config = self.config.status
        what = f"AzamPay status {transaction_id}"
        params = {status_config.reference_param: transaction_id, status_config.provider_param: provider}
        response = self._authorised("GET", f"{self.config.checkout_url}{status_config.path}", what, params=params)
        data = _json(response, what)
        if response.status_code not in (200, 404) or not isinstance(data, dict):
            raise AzamPayUnexpectedAnswer(f"{what}: unexpected HTTP {response.status_code}")
        text = data.get("data")
        if isinstance(text, str) and response.status_code == 200 and data.get("success") is not False:
            return StatusAnswer(map_status_text(text, status_config), text, response.content, response.status_code)
        if data.get("success") is False:
            # A refusal's message ("Failed to fetch ...") is not the transaction's state: never map it to FAILED.
            return StatusAnswer(Status.UNKNOWN, str(data.get("message") or ""), response.content, response.status_code)
        raise AzamPayUnexpectedAnswer(f"{what}: answer has no text in `data`")
