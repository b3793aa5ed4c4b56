"""The portal's two endpoints: start a checkout (API key, per-msisdn rate limit) and read a donation's status.

POST /api/v1.0/donors/payment/azampay/checkout/   creates the PENDING donation and asks AzamPay (jobs.checkout)
GET  /api/v1.0/donors/payment/azampay/status/?donation_id=N
     returns the folded state. For a PENDING donation it may ask AzamPay first (at most once per
     receiver.status_check_min_interval_seconds per donation); the answer is appended as a `poll` event,
     then the endpoint waits, up to receiver.status_wait_seconds, for the scheduled fold's checkpoint to
     pass that event, and answers with the fresh state. The receiver never folds.

Rate limits are per receiver process (in memory); with several workers the effective limit is
workers times the configured one.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from collections import defaultdict, deque
from datetime import datetime, timezone
from decimal import Decimal

from loguru import logger
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from pipeline.config import Config
from pipeline.db import transaction
from pipeline.errors import (
    AzamreconError,
    CheckoutNotRecorded,
    InputError,
    NotFound,
    StoreError,
)
from pipeline.events import normalise_msisdn
from pipeline.models import Donation, FoldCheckpoint, PaymentEvent
from pipeline.store.donations import PROVIDERS

CHECKOUT_PATH = "/api/v1.0/donors/payment/azampay/checkout/"
STATUS_PATH = "/api/v1.0/donors/payment/azampay/status/"
MAX_CHECKOUT_BODY = 8 * 1024


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"status": "error", "detail": detail}, status_code=status)


class RateLimiter:
    """At most `limit` hits per key in any `window` seconds (sliding window, in memory, thread-safe)."""

    def __init__(self, limit: int, window: float):
        self.limit, self.window = limit, window
        self.hits: dict[str, deque] = defaultdict(deque)
        self.lock = threading.Lock()

    def allow(self, key: str, at: float | None = None) -> bool:
        at = time.monotonic() if at is None else at
        with self.lock:
            hits = self.hits[key]
            while hits and hits[0] <= at - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return False
            hits.append(at)
            return True


def _decimal(data: dict, name: str, required: bool = True) -> Decimal | None:
    value = data.get(name)
    if value is None:
        if required:
            raise InputError(f"{name} is required")
        return None
    if isinstance(value, float) or isinstance(value, bool):
        raise InputError(f"{name} must be a decimal string or integer, e.g. \"1000.00\"")
    try:
        amount = Decimal(str(value))
    except Exception:
        raise InputError(f"{name} is not a number") from None
    if not amount.is_finite() or amount <= 0 or amount.as_tuple().exponent < -2 or amount >= Decimal("1e12"):
        raise InputError(f"{name} must be positive with at most 2 decimal places")
    return amount


class Portal:
    def __init__(self, config: Config, engine, client_factory=None):
        self.config, self.engine = config, engine
        self.api_key = config.receiver.checkout_api_key.get_secret_value()
        self.checkout_limiter = RateLimiter(config.receiver.checkout_rate_limit_per_minute, 60.0)
        self.status_limiter = RateLimiter(1, config.receiver.status_check_min_interval_seconds) if config.receiver.status_check_min_interval_seconds else None
        self._client_factory = client_factory
        self._client = None

    def client(self):
        if self._client is None:
            if self._client_factory is not None:
                self._client = self._client_factory()
            else:
                from pipeline.azampay import AzamPayClient

                self._client = AzamPayClient(self.config.azampay)
        return self._client

    # -- POST checkout -------------------------------------------------------------------------
    def _authorised(self, request: Request) -> bool:
        given = request.headers.get("x-api-key") or ""
        bearer = request.headers.get("authorization") or ""
        if not given and bearer.lower().startswith("bearer "):
            given = bearer[7:].strip()
        return bool(given) and hmac.compare_digest(given.encode(), self.api_key.encode())

    async def checkout(self, request: Request) -> JSONResponse:
        if not self.api_key:
            return _error(404, "checkout endpoint disabled: set receiver.checkout_api_key")
        if not self._authorised(request):
            return _error(401, "missing or wrong API key (X-API-Key header)")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _error(415, "send application/json")
        body = await request.body()
        if len(body) > MAX_CHECKOUT_BODY:
            return _error(413, "body too large")
        try:
            data = json.loads(body)
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
        except ValueError as exc:
            return _error(400, f"invalid JSON: {str(exc)[:100]}")
        try:
            request_fields = self._validate(data)
        except InputError as exc:
            return _error(400, str(exc))
        if not self.checkout_limiter.allow(request_fields["msisdn"]):
            return JSONResponse(
                {"status": "error", "detail": f"too many checkouts for this number; at most {self.checkout_limiter.limit} per minute"},
                status_code=429,
                headers={"retry-after": "60"},
            )
        try:
            result = await run_in_threadpool(self._initiate, request_fields)
        except NotFound as exc:
            return _error(404, str(exc))
        except InputError as exc:
            return _error(400, str(exc))
        except CheckoutNotRecorded as exc:
            logger.error(f"checkout: {exc}")
            return JSONResponse(
                {"status": "accepted_not_recorded", "donation_id": exc.donation_id, "reference": exc.reference,
                 "transaction_id": exc.transaction_id, "detail": "AzamPay accepted the checkout but it could not be recorded; do not retry"},
                status_code=502,
            )
        except StoreError as exc:
            logger.error(f"checkout: {exc}")
            return _error(503, "database unavailable; try again")
        answer = {
            "donation_id": result.donation_id,
            "reference": result.reference,
            "transaction_id": result.transaction_id,
            "charge_amount": str(result.charge_amount),
            "charge_currency": result.charge_currency,
            "status": "FAILED" if result.event_status == "FAILED" else "PENDING",
            "message": result.message if result.accepted else str(result.error),
        }
        if result.accepted:
            return JSONResponse(answer, status_code=201)
        return JSONResponse(answer, status_code=502 if result.event_status != "FAILED" else 422)

    def _validate(self, data: dict) -> dict:
        patient_id = data.get("patient_id")
        if patient_id is not None and (not isinstance(patient_id, int) or isinstance(patient_id, bool) or patient_id < 1):
            raise InputError("patient_id must be a positive integer (or null for a general donation)")
        msisdn = normalise_msisdn(data.get("msisdn")) if isinstance(data.get("msisdn"), str) else None
        if msisdn is None:
            raise InputError("msisdn must be a Tanzanian mobile number: 0XXXXXXXXX, 255XXXXXXXXX or +255XXXXXXXXX")
        provider = data.get("provider")
        known = {p.lower(): p for p in PROVIDERS}
        if not isinstance(provider, str) or provider.strip().lower() not in known:
            raise InputError(f"provider must be one of {', '.join(PROVIDERS)}")
        currency = data.get("currency") or self.config.donations.currency
        if not isinstance(currency, str):
            raise InputError("currency must be a string")
        return {
            "patient_id": patient_id,
            "amount": _decimal(data, "amount"),
            "patient_amount": _decimal(data, "patient_amount", required=False),
            "support_amount": _decimal(data, "support_amount", required=False),
            "msisdn": msisdn,
            "provider": known[provider.strip().lower()],
            "currency": currency.upper(),
        }

    def _initiate(self, fields: dict):
        from jobs.checkout import initiate_checkout

        return initiate_checkout(self.engine, self.config, self.client(), now=datetime.now(timezone.utc), **fields)

    # -- GET status ----------------------------------------------------------------------------
    async def status(self, request: Request) -> JSONResponse:
        raw = request.query_params.get("donation_id", "")
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18 or int(raw) < 1:
            return _error(400, "donation_id must be a positive integer")
        donation_id = int(raw)
        try:
            state = await run_in_threadpool(self._state, donation_id)
            if state is None:
                return _error(404, f"donation {donation_id} not found")
            checked = False
            if state["status"] == "PENDING" and state["transaction_id"] and self._may_check(donation_id):
                event_id = await run_in_threadpool(self._ask_azampay, donation_id)
                checked = event_id is not None
                if checked:
                    await self._wait_for_fold(event_id)
                    state = await run_in_threadpool(self._state, donation_id)
        except StoreError:
            return _error(503, "database unavailable; try again")
        state.pop("transaction_id")
        state["checked_with_azampay"] = checked
        return JSONResponse(state)

    def _may_check(self, donation_id: int) -> bool:
        return self.status_limiter is None or self.status_limiter.allow(str(donation_id))

    def _state(self, donation_id: int) -> dict | None:
        with transaction(self.engine) as session:
            donation = session.get(Donation, donation_id)
            if donation is None:
                return None
            return {
                "donation_id": donation.id,
                "status": donation.status,
                "amount": str(donation.amount),
                "currency": donation.currency,
                "reference": donation.external_reference,
                "transaction_id": donation.transaction_id,
                "completed_at": donation.completed_at.isoformat() if donation.completed_at else None,
            }

    def _ask_azampay(self, donation_id: int) -> int | None:
        """One status call for this donation (jobs.poll, single-donation mode); the id of the appended poll event."""
        from jobs.poll import run_poll

        try:
            report = run_poll(self.engine, self.config, self.client(), datetime.now(timezone.utc), donation_id=donation_id)
        except AzamreconError as exc:  # AzamPay unreachable, a rebuild in progress, ...: answer from the folded state
            logger.warning(f"status check for donation {donation_id}: {exc}")
            return None
        if not report.appended:
            return None
        with transaction(self.engine) as session:
            return session.scalar(
                select(func.max(PaymentEvent.id)).where(PaymentEvent.donation_id == donation_id, PaymentEvent.source == "poll")
            )

    async def _wait_for_fold(self, event_id: int) -> None:
        """Read-your-writes: wait (bounded) until the scheduled fold's checkpoint has passed `event_id`."""
        deadline = time.monotonic() + self.config.receiver.status_wait_seconds
        while time.monotonic() < deadline:
            position = await run_in_threadpool(self._fold_position)
            if position >= event_id:
                return
            await asyncio.sleep(0.05)

    def _fold_position(self) -> int:
        with transaction(self.engine) as session:
            return session.scalar(select(FoldCheckpoint.position).where(FoldCheckpoint.name == "main")) or 0
