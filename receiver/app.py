"""The receiver's routes and answers.

POST /api/v1.0/donors/payment/azampay/callback/ (with or without the trailing slash) stores the raw body
and selected headers first (through the group-commit writer), then answers:

    200 known donation            404 unknown donation (stored)     400 bad JSON / schema (stored)
    (known/unknown as pipeline.resolution decides it for the fold too; an unusable amount is not a 400)
    413 body over the limit       415 not JSON (stored)              403 wrong credentials / refused address (stored)
    202 credentials required but absent (stored, unverified)        503 database unreachable, spooled to disk
    500 / 507 database and spool both failed (never a 2xx)

GET /healthz answers 200 when `SELECT 1` works, 503 otherwise.

`create_app(config)` builds the app; `app_factory()` is the entry point for `uvicorn --factory` and for
each worker process of `azamrecon serve` (config from $AZAMRECON_CONFIG).
"""

from __future__ import annotations

import contextlib
import gc
from datetime import UTC, datetime

from loguru import logger
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.auth import Authenticator
from pipeline.config import Config, load_config
from pipeline.db import is_sqlite, make_engine
from pipeline.fold_batch import reference_format
from pipeline.logs import payments, secrets_of, warn_if_open
from pipeline.privacy import BodyRedactor, redactor_for
from pipeline.redact import log_value
from pipeline.resolution import ReferenceFormat
from pipeline.sections import DatabaseConfig
from pipeline.store.portal import PortalLookup
from receiver import metrics, portal
from receiver.callback import (
    ANSWER_FORBIDDEN,
    ANSWER_KNOWN,
    ANSWER_REFUSED,
    ANSWER_UNKNOWN,
    ANSWER_UNVERIFIED,
    Classified,
    Rules,
    answer_for,
    classify_callback,
    declared_over,
    decode_headers,
)
from receiver.http import READ_TIMEOUTS_KEY, ReadTimeouts
from receiver.logsink import configure_batched_logging, flush_logs, log_received_callback
from receiver.spool import Spool
from receiver.wal import WalCheckpointer
from receiver.writer import GroupCommitWriter, Written

CALLBACK_PATH = "/api/v1.0/donors/payment/azampay/callback/"
OPENAPI_FILE = (
    __file__.rsplit("/", 1)[0] + "/openapi.yaml"
)  # the receiver's OpenAPI 3 document, served at GET /openapi.yaml


async def openapi_document(request: Request) -> Response:
    with open(OPENAPI_FILE, "rb") as document:
        return Response(document.read(), media_type="application/yaml")


_JSON_HEADERS = b"application/json"


def _messages(answer: tuple[int, bytes], extra_headers: tuple = ()) -> tuple[dict, dict]:
    status, body = answer
    return (
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", _JSON_HEADERS), (b"content-length", str(len(body)).encode()), *extra_headers],
        },
        {"type": "http.response.body", "body": body},
    )


# the ASGI messages of the fixed answers, built once (the server only reads them)
_FIXED_MESSAGES = {
    id(answer): (answer, _messages(answer))
    for answer in (ANSWER_KNOWN, ANSWER_UNKNOWN, ANSWER_UNVERIFIED, ANSWER_FORBIDDEN, ANSWER_REFUSED)
}


async def _send(send, answer: tuple[int, bytes], extra_headers: tuple = ()) -> None:
    fixed = None if extra_headers else _FIXED_MESSAGES.get(id(answer))
    if fixed is not None and fixed[0] is answer:
        start, body = fixed[1]
    else:
        start, body = _messages(answer, extra_headers)
    await send(start)
    await send(body)


def _log_answer(request: Classified, written: Written, status: int) -> None:
    """The payments warnings the webhook guide's users grep for."""
    fields = request.fields
    if written == Written.UNKNOWN:
        payments.warning(  # the legacy view's level: the guide's users filter on it
            "Could not find donation from external_id: {} (callback stored)",
            log_value(
                str(fields.utilityref or fields.externalreference or fields.donation_hint or fields.transaction_ref)
            ),
        )
    elif written == Written.STORED and status != 202:
        payments.warning(
            "Azam Pay callback answered {}: {} (stored, auth={})",
            status,
            log_value(fields.parse_error or "credentials rejected"),
            request.auth,
        )


class CallbackEndpoint:
    """A raw ASGI endpoint (no Request/Response objects in the hot path)."""

    def __init__(self, config: Config, authenticator: Authenticator, writer: GroupCommitWriter, redactor: BodyRedactor):
        self.limit = config.webhook.max_body_bytes
        self.rules = Rules(self.limit, authenticator, ReferenceFormat(config.donations.reference_prefix), redactor)
        self.writer = writer

    async def _read_body(self, receive, declared_over: bool) -> tuple[bytes, bool, bool]:
        """(body, over_limit, disconnected). Reads at most limit+1 bytes; keeps the first `limit`."""
        limit = self.limit
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks)[:limit], declared_over or size > limit, True
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    return b"".join(chunks)[:limit], True, False
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return body, declared_over, False

    async def __call__(self, scope, receive, send) -> None:
        received_at = datetime.now(UTC)
        headers = decode_headers(scope["headers"])
        body, over, disconnected = await self._read_body(receive, declared_over(headers, self.limit))
        if disconnected:
            # gone, or cut by receiver.body_timeout_seconds: no callback AzamPay delivered, and nobody awaits an
            # answer; storing it let anyone add rows without ever sending a whole request (docs/deploy.md)
            return
        client = scope.get("client")
        request = classify_callback(body, over, headers, client[0] if client else None, received_at, self.rules)
        log_received_callback(body, request.decoded)  # redacted and formatted off the event loop when batched
        (written,) = await self.writer.submit(request.row, request.keys, request.typed)
        answer = answer_for(request.outcome, written, self.limit, request.fields.parse_error)
        self.writer.counters.answers.labels(answer[0]).inc()
        _log_answer(request, written, answer[0])
        extra = ((b"retry-after", b"30"),) if answer[0] == 503 else ()
        await _send(send, answer, extra)


class ReceiverApp(Starlette):
    """Starlette, except that callback POSTs go straight to the CallbackEndpoint: the hot path skips the
    middleware stack and the router (a measurable share of a callback's CPU: bench/RESULTS.md). An exception there is
    answered 500 by the server (uvicorn), as Starlette's error middleware would."""

    callback_endpoint: CallbackEndpoint | None = None

    async def __call__(self, scope, receive, send) -> None:
        endpoint = self.callback_endpoint
        if (
            endpoint is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in _CALLBACK_PATHS
            and not scope.get("root_path")
        ):
            scope["app"] = self
            await endpoint(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


_CALLBACK_PATHS = frozenset((CALLBACK_PATH, CALLBACK_PATH.rstrip("/")))


def make_receiver_engine(database: DatabaseConfig, timeout_seconds: float = 4.0):
    """The receiver's engine: like every other, plus connect/read/write timeouts on MySQL so a hung server
    turns into StoreUnavailable (and a spooled 503) instead of a hung writer, and on SQLite no WAL copy
    inside a group commit (create_app gives the writer a receiver.wal.WalCheckpointer instead).

    A callback waits for at most two timeouts (a hung ping, then the reconnect's handshake), so
    receiver.database_timeout_seconds (4 s) keeps it well below nginx's proxy_read_timeout (60 s): at 30 s
    nginx answered 504 while the receiver was still spooling."""
    if database.url.startswith("mysql"):
        return make_engine(
            database,
            connect_args={
                "connect_timeout": timeout_seconds,
                "read_timeout": timeout_seconds,
                "write_timeout": timeout_seconds,
                "charset": "utf8mb4",
            },
        )
    return make_engine(database, sqlite_autocheckpoint=False)


def create_app(config: Config, engine=None, client_factory=None) -> Starlette:
    """The receiver app. It owns (and disposes) its engine unless one is given. `client_factory` builds the
    AzamPay client for the checkout and status endpoints (default: from config.azampay)."""
    owns_engine = engine is None
    if engine is None:
        engine = make_receiver_engine(config.database, config.receiver.database_timeout_seconds)
    authenticator = Authenticator.from_config(config.webhook)
    spool = Spool(config.receiver.spool_dir)
    checkpointer = WalCheckpointer(engine) if is_sqlite(engine) else None
    writer = GroupCommitWriter(
        engine,
        spool,
        max_batch=config.receiver.group_commit_max_batch,
        checkpointer=checkpointer,
        more_donations=PortalLookup(config.portal, reference_format(config)) if config.portal.enabled else None,
    )
    endpoint = CallbackEndpoint(config, authenticator, writer, redactor_for(config))
    portal_endpoints = portal.Portal(config, engine, client_factory)

    def database_ok() -> bool:
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1").scalar()
            return True
        except Exception:
            return False

    async def healthz(request: Request) -> JSONResponse:
        if await run_in_threadpool(database_ok):
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable", "detail": "database unreachable"}, status_code=503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        warn_if_open(config)
        writer.start()
        # Everything loaded so far (modules, SQLAlchemy and pydantic structures) lives as long as the
        # process: move it out of the cyclic GC's generations, so a full collection under load scans only
        # what requests allocate (the receiver's tail latency under load: bench/RESULTS.md).
        gc.freeze()
        logger.info("receiver started: callbacks at {} (group commit up to {} rows)", CALLBACK_PATH, writer.max_batch)
        try:
            yield {
                READ_TIMEOUTS_KEY: ReadTimeouts(
                    config.receiver.header_timeout_seconds, config.receiver.body_timeout_seconds
                )
            }  # for receiver.http
        finally:
            portal_endpoints.close()
            await run_in_threadpool(writer.stop)
            spool.close()
            if owns_engine:
                engine.dispose()
            logger.info(
                "receiver stopped: {} rows committed in {} transactions, {} spooled",
                writer.rows_committed,
                writer.batches,
                writer.rows_spooled,
            )
            flush_logs()

    app = ReceiverApp(
        routes=[
            Route(CALLBACK_PATH, endpoint, methods=["POST"]),
            Route(CALLBACK_PATH.rstrip("/"), endpoint, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/openapi.yaml", openapi_document, methods=["GET"]),
            Route("/metrics", metrics.endpoint(engine, config, writer), methods=["GET"]),
            Route(portal.CHECKOUT_PATH, portal_endpoints.checkout, methods=["POST"]),
            Route(portal.STATUS_PATH, portal_endpoints.status, methods=["GET"]),
            Route(portal.STATUS_PATH.rstrip("/"), portal_endpoints.status, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.callback_endpoint = endpoint
    app.state.config = config
    app.state.engine = engine
    app.state.writer = writer
    app.state.checkpointer = checkpointer
    app.state.spool = spool
    return app


def app_factory() -> Starlette:
    """Entry point for `uvicorn --factory receiver.app:app_factory` and each `serve` worker: config from
    $AZAMRECON_CONFIG (or ./config.yaml) plus the environment overrides; logging configured here."""
    config = load_config()
    configure_batched_logging(config.logging, component="receiver", secrets=secrets_of(config))
    return create_app(config)
