"""The portal's two endpoints: start a checkout (API key, per-msisdn rate limit) and read a donation's status.

Both need the portal's key, receiver.checkout_api_key, in X-API-Key (or `Authorization: Bearer`); with
no key configured both answer 404 (disabled). The status endpoint tells a donation's reference and amount,
so it is no more public than the checkout.

POST /api/v1.0/donors/payment/azampay/checkout/   creates the PENDING donation and asks AzamPay (pipeline.checkout)
GET  /api/v1.0/donors/payment/azampay/status/?donation_id=N
     returns the folded state. For a PENDING donation it may ask AzamPay first (at most once per
     receiver.status_check_min_interval_seconds per donation); the answer is appended as a `poll` event,
     then the endpoint waits, up to receiver.status_wait_seconds, for the scheduled fold's checkpoint to
     pass that event, and answers with the fresh state. The receiver never folds.

AzamPay calls run on pools of their own (receiver.status_workers, receiver.checkout_workers), never on
Starlette's threadpool, which /healthz shares. A status request waits for AzamPay at most
receiver.status_check_timeout_seconds; then, or at once when the pool is full, it answers with the
current state and "checking": true (the call goes on and its answer is appended). A checkout finding its
pool full gets 503 at once, before anything is created.

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
from concurrent.futures import Future
from datetime import UTC, datetime

from loguru import logger
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
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
from pipeline.fold import Source, Status
from pipeline.models import Donation, PaymentEvent
from pipeline.resolution import as_id
from pipeline.store.checkpoint import fold_position
from receiver.checkout_request import checkout_fields
from receiver.pool import BoundedPool

CHECKOUT_PATH = "/api/v1.0/donors/payment/azampay/checkout/"
STATUS_PATH = "/api/v1.0/donors/payment/azampay/status/"
MAX_CHECKOUT_BODY = 8 * 1024


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"status": "error", "detail": detail}, status_code=status)


def _busy(why: str) -> JSONResponse:
    return JSONResponse(
        {"status": "error", "detail": f"busy: {why}; nothing was created, try again"},
        status_code=503,
        headers={"retry-after": "5"},
    )


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


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None past `limit` bytes: read as it streams in, never whole into memory first."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class Portal:
    def __init__(self, config: Config, engine, client_factory=None):
        self.config, self.engine = config, engine
        self.api_key = config.receiver.checkout_api_key.get_secret_value()
        self.checkout_limiter = RateLimiter(config.receiver.checkout_rate_limit_per_minute, 60.0)
        self.status_limiter = (
            RateLimiter(1, config.receiver.status_check_min_interval_seconds)
            if config.receiver.status_check_min_interval_seconds
            else None
        )
        self.status_pool = BoundedPool(config.receiver.status_workers, "azamrecon-status")
        self.checkout_pool = BoundedPool(config.receiver.checkout_workers, "azamrecon-checkout")
        self._checks: dict[int, Future] = {}  # donation id -> its AzamPay check in flight
        self._client_factory = client_factory
        self._client = None
        self._client_lock = threading.Lock()

    def close(self) -> None:
        self.status_pool.close()
        self.checkout_pool.close()

    def client(self):
        with self._client_lock:  # the pools' threads ask at once: one client (and one token cache) for all
            if self._client is None:
                if self._client_factory is not None:
                    self._client = self._client_factory()
                else:
                    from pipeline.azampay import AzamPayClient

                    self._client = AzamPayClient(self.config.azampay)
            return self._client

    # -- credentials ---------------------------------------------------------------------------
    def _authorised(self, request: Request) -> bool:
        given = request.headers.get("x-api-key") or ""
        bearer = request.headers.get("authorization") or ""
        if not given and bearer.lower().startswith("bearer "):
            given = bearer[7:].strip()
        return bool(given) and hmac.compare_digest(given.encode(), self.api_key.encode())

    def _refusal(self, request: Request, endpoint: str) -> JSONResponse | None:
        if not self.api_key:
            return _error(404, f"{endpoint} endpoint disabled: set receiver.checkout_api_key")
        if not self._authorised(request):
            return _error(401, "missing or wrong API key (X-API-Key header)")
        return None

    # -- POST checkout -------------------------------------------------------------------------
    async def _checkout_fields(self, request: Request) -> dict | JSONResponse:
        """The validated checkout fields, or the 4xx answer: every input fault is a 4xx, never a 500."""
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _error(415, "send application/json")
        try:
            body = await _read_capped(request, MAX_CHECKOUT_BODY)
        except ClientDisconnect:  # gone (or cut by receiver.body_timeout_seconds): nobody reads the answer
            return _error(400, "the request body was not complete")
        if body is None:
            return _error(413, "body too large")
        try:
            data = json.loads(body)
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
            return _error(400, f"invalid JSON: {str(exc)[:100]}")
        try:
            return checkout_fields(data, self.config)
        except InputError as exc:
            return _error(400, str(exc))

    async def checkout(self, request: Request) -> JSONResponse:
        refusal = self._refusal(request, "checkout")
        if refusal is not None:
            return refusal
        request_fields = await self._checkout_fields(request)
        if isinstance(request_fields, JSONResponse):
            return request_fields
        if self.checkout_pool.busy >= self.checkout_pool.workers:  # before the rate limit: a refused try must not count
            return _busy(f"{self.checkout_pool.workers} checkouts are in progress")
        if not self.checkout_limiter.allow(request_fields["msisdn"]):
            return JSONResponse(
                {
                    "status": "error",
                    "detail": f"too many checkouts for this number; at most {self.checkout_limiter.limit} per minute",
                },
                status_code=429,
                headers={"retry-after": "60"},
            )
        future = self.checkout_pool.try_submit(self._initiate, request_fields)
        if future is None:
            return _busy(f"{self.checkout_pool.workers} checkouts are in progress")
        try:
            result = await asyncio.wrap_future(future)
        except NotFound as exc:
            return _error(404, str(exc))
        except InputError as exc:
            return _error(400, str(exc))
        except CheckoutNotRecorded as exc:
            logger.error(f"checkout: {exc}")
            return JSONResponse(
                {
                    "status": "accepted_not_recorded",
                    "donation_id": exc.donation_id,
                    "reference": exc.reference,
                    "transaction_id": exc.transaction_id,
                    "detail": "AzamPay accepted the checkout but it could not be recorded; do not retry",
                },
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
            "status": Status.FAILED if result.event_status == Status.FAILED else Status.PENDING,
            "message": result.message if result.accepted else str(result.error),
        }
        if result.accepted:
            return JSONResponse(answer, status_code=201)
        return JSONResponse(answer, status_code=502 if result.event_status != Status.FAILED else 422)

    def _initiate(self, fields: dict):
        # on first use, as AzamPayClient: it loads requests
        from pipeline.checkout import initiate_checkout, initiate_portal_checkout

        start = initiate_portal_checkout if self.config.portal.enabled else initiate_checkout
        return start(self.engine, self.config, self.client(), now=datetime.now(UTC), **fields)

    # -- GET status ----------------------------------------------------------------------------
    async def status(self, request: Request) -> JSONResponse:
        refusal = self._refusal(request, "status")
        if refusal is not None:
            return refusal
        donation_id = as_id(request.query_params.get("donation_id", ""))  # the rule's reading of a stated id
        if not donation_id:
            return _error(400, "donation_id must be a positive integer")
        try:
            state = await run_in_threadpool(self._state, donation_id)
            if state is None:
                return _error(404, f"donation {donation_id} not found")
            checked = checking = False
            if state["status"] == Status.PENDING and state["transaction_id"]:
                event_id, checking = await self._check(donation_id)
                checked = event_id is not None
                if checked:
                    await self._wait_for_fold(event_id)
                    state = await run_in_threadpool(self._state, donation_id)
        except StoreError:
            return _error(503, "database unavailable; try again")
        state.pop("transaction_id")
        state["checked_with_azampay"] = checked
        state["checking"] = checking
        return JSONResponse(state)

    async def _check(self, donation_id: int) -> tuple[int | None, bool]:
        """(id of the poll event AzamPay's answer was appended as, still checking). Waits at most
        receiver.status_check_timeout_seconds, and not at all when the pool is full."""
        future = self._checks.get(donation_id)  # another request's check of this donation: wait for it too
        if future is None:
            if self.status_pool.busy >= self.status_pool.workers:
                return None, True  # busy: answer now; the scheduler's poller asks about it as well
            if not self._may_check(donation_id):
                return None, False
            future = self.status_pool.try_submit(self._ask_azampay, donation_id)
            if future is None:
                return None, True
            self._checks[donation_id] = future
            future.add_done_callback(
                lambda done: self._checks.pop(donation_id, None) if self._checks.get(donation_id) is done else None
            )
        try:
            event_id = await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), self.config.receiver.status_check_timeout_seconds
            )
        except TimeoutError:
            return None, True  # the call goes on in the pool; its answer is appended when it comes
        return event_id, False

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
        """One status call for this donation (pipeline.status_check); the id of the appended poll event."""
        from pipeline.status_check import check_donation  # on first use, as AzamPayClient: it loads requests

        try:
            report = check_donation(self.engine, self.config, self.client(), donation_id, datetime.now(UTC))
        except AzamreconError as exc:  # AzamPay unreachable, a rebuild in progress, ...: answer from the folded state
            logger.warning(f"status check for donation {donation_id}: {exc}")
            return None
        if not report.appended:
            return None
        with transaction(self.engine) as session:
            return session.scalar(
                select(func.max(PaymentEvent.id)).where(
                    PaymentEvent.donation_id == donation_id, PaymentEvent.source == Source.POLL
                )
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
            return fold_position(session).position
