"""The HTTP side: AzamPay's endpoints plus /_sandbox/ control endpoints, on a stdlib ThreadingHTTPServer.

AzamPay endpoints (one base URL serves as both auth_url and checkout_url):
  POST /AppRegistration/GenerateToken     POST /azampay/mno/checkout
  GET  /api/v1/Partner/GetPaymentPartners GET  {status_path}?{reference_param}=..&{provider_param}=..
Control endpoints (no auth: the sandbox only listens where you put it):
  GET  /_sandbox/stats | /_sandbox/transactions | /_sandbox/transactions/{id} | /_sandbox/callbacks | /_sandbox/outcomes
  POST /_sandbox/outcomes {msisdn: outcome}       POST /_sandbox/transactions {seed one, no callback} or [{...}, ...]
  POST /_sandbox/transactions/{id}/status {"data": text}
  POST /_sandbox/reject-token {"times": n}        POST /_sandbox/fail-next {"times": n, "status": 503}
  POST /_sandbox/config {callback_url, webhook_password, latency, status_latency, delay_seconds, default_outcome}
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from loguru import logger

from sandbox.callbacks import CallbackSender
from sandbox.outcomes import check_outcome, plan_callbacks
from sandbox.settings import SandboxSettings
from sandbox.state import SandboxState
from sandbox.validation import check_checkout, partners, problem

UNAUTHORIZED = {"message": "Please Provide Valid Authorization", "status": "Error"}
TOKEN_REFUSED = {
    "data": None,
    "message": "Provided detail is not valid for this app or secret key has been expired",
    "success": False,
    "statusCode": 423,
}
MAX_BODY = 1024 * 1024

Answer = tuple[int, Any]


class _BadRequest(Exception):
    def __init__(self, errors: dict[str, list[str]]):
        self.errors = errors


class Sandbox:
    """The application: routes a request to an answer. Knows nothing about sockets."""

    def __init__(self, settings: SandboxSettings):
        self.settings = settings
        self.state = SandboxState(settings)
        self.callbacks = CallbackSender(settings.callback_workers, settings.callback_timeout)

    # --- AzamPay endpoints ---

    def token(self, body: Any) -> Answer:
        body = body if isinstance(body, dict) else {}
        issued = self.state.issue_token(body.get("appName"), body.get("clientId"), body.get("clientSecret"))
        if issued is None:
            return 423, TOKEN_REFUSED
        token, expire = issued
        data = {"accessToken": token, "expire": expire.strftime("%Y-%m-%dT%H:%M:%SZ")}
        return 200, {"data": data, "message": "Token generated successfully", "success": True, "statusCode": 200}

    def checkout(self, body: Any) -> Answer:
        self.state.count("checkouts")
        errors = check_checkout(body)
        outcome = None
        if not errors:
            try:
                outcome = self.state.outcome_for(body["accountNumber"], body.get("additionalProperties") or {})
            except ValueError as exc:
                errors = {"additionalProperties.sandbox_outcome": [str(exc)]}
        if errors:
            self.state.count("checkout_rejections")
            return 400, problem(errors)
        extra = body.get("additionalProperties") or {}
        txn = self.state.add_transaction(
            external_id=body["externalId"],
            msisdn=body["accountNumber"],
            provider=body["provider"],
            amount=body["amount"],
            currency=body["currency"],
            additional_properties=extra,
            outcome=outcome,
        )
        url = self.settings.callback_url
        if url:
            delay = extra.get("sandbox_delay")
            steps = plan_callbacks(
                outcome, txn, self.settings, float(delay) if isinstance(delay, (int, float)) else None
            )
            txn.callbacks_planned = len(steps)
            self.callbacks.schedule(url, txn.transaction_id, steps)
        answer = {
            "success": True,
            "transactionId": txn.transaction_id,
            "message": "Your request has been received and is being processed.",
        }
        return 200, answer

    def status(self, query: dict[str, str]) -> Answer:
        reference = query.get(self.settings.reference_param)
        if not reference:
            raise _BadRequest(
                {self.settings.reference_param: [f"The {self.settings.reference_param} field is required."]}
            )
        txn = self.state.status_of(reference)
        provider = query.get(self.settings.provider_param)
        if txn is None or (provider and provider.lower() != txn.provider.lower()):
            return 200, {"data": None, "message": "Transaction not found.", "success": False, "statusCode": 404}
        return 200, {"data": txn.status_text, "message": "Request successful.", "success": True, "statusCode": 200}

    # --- control endpoints ---

    @staticmethod
    def _seed(state, body: dict) -> dict:
        return state.add_transaction(
            external_id=str(body.get("externalId", "")),
            msisdn=str(body.get("msisdn", "")),
            provider=str(body.get("provider", "Mpesa")),
            amount=str(body.get("amount", "1000")),
            outcome=body.get("outcome", "success"),
            transaction_id=body.get("transactionId"),
        ).as_dict()

    def control(self, method: str, parts: list[str], body: Any) -> Answer:
        state, body = self.state, body if body is not None else {}
        match method, parts:
            case "GET", ["stats"]:
                return 200, {
                    **state.stats(),
                    "callbacks_sent": self.callbacks.count(),
                    "callbacks_scheduled": self.callbacks.pending(),
                }
            case "GET", ["transactions"]:
                return 200, state.transaction_list()
            case "GET", ["transactions", tid]:
                found = [t for t in state.transaction_list() if t["transaction_id"] == tid]
                return (200, found[0]) if found else (404, {"message": "no such transaction"})
            case "POST", ["transactions"]:
                if isinstance(body, list):  # many at once: a benchmark seeds thousands in one request
                    return 200, [self._seed(state, item) for item in body]
                return 200, self._seed(state, body)
            case "POST", ["transactions", tid, "status"]:
                if tid not in state.transactions:
                    return 404, {"message": "no such transaction"}
                return 200, state.set_status_text(tid, str(body.get("data", ""))).as_dict()
            case "GET", ["callbacks"]:
                sent = self.callbacks.sent()
                return 200, {"count": len(sent), "callbacks": sent}
            case "GET", ["outcomes"]:
                return 200, {"default": self.settings.default_outcome, "rules": dict(self.settings.outcomes)}
            case "POST", ["outcomes"]:
                state.set_outcomes({str(k): v for k, v in body.items()})
                return 200, {"rules": dict(self.settings.outcomes)}
            case "POST", ["reject-token"]:
                state.reject_token(int(body.get("times", 1)))
                return 200, {"ok": True}
            case "POST", ["fail-next"]:
                state.fail_next(int(body.get("times", 1)), int(body.get("status", 503)))
                return 200, {"ok": True}
            case "POST", ["config"]:
                self.configure(**body)
                return 200, {"ok": True}
        return 404, {"message": "unknown control endpoint"}

    def configure(self, **changes: Any) -> None:
        allowed = {"callback_url", "webhook_password", "latency", "status_latency", "delay_seconds", "default_outcome"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot configure {', '.join(sorted(unknown))}")
        if "default_outcome" in changes:
            check_outcome(changes["default_outcome"])
        for key, value in changes.items():
            setattr(
                self.settings, key, float(value) if key in ("latency", "status_latency", "delay_seconds") else value
            )

    # --- routing ---

    def handle(self, method: str, path: str, query: dict[str, str], headers: Any, body: Any) -> Answer:
        if path.startswith("/_sandbox/"):
            return self.control(method, [p for p in path[len("/_sandbox/") :].split("/") if p], body)
        routes: dict[tuple[str, str], Callable[[], Answer]] = {
            ("POST", "/AppRegistration/GenerateToken"): lambda: self.token(body),
            ("POST", "/azampay/mno/checkout"): lambda: self.checkout(body),
            ("GET", "/api/v1/Partner/GetPaymentPartners"): lambda: (200, partners()),
            ("GET", self.settings.status_path): lambda: self.status(query),
        }
        route = routes.get((method, path))
        if route is None:
            return 404, {"message": "Not found", "status": "Error"}
        delay = self.settings.latency + (self.settings.status_latency if path == self.settings.status_path else 0.0)
        if delay > 0:
            time.sleep(delay)
        failure = self.state.injected_failure()
        if failure is not None:
            return failure, {"message": "Injected failure", "status": "Error"}
        if path != "/AppRegistration/GenerateToken" and not self.state.authorised(
            headers.get("Authorization"), headers.get("X-API-KEY")
        ):
            return 401, UNAUTHORIZED
        return route()

    def close(self) -> None:
        self.callbacks.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the poller reuses connections
    disable_nagle_algorithm = True  # headers and body are two writes; Nagle would hold the second back
    timeout = 30  # idle keep-alive connections do not pin a thread forever
    server_version = "azamrecon-sandbox"
    sys_version = ""
    app: Sandbox  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # one line per request would flood the terminal under a benchmark's load

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._answer(413, {"message": "body too large"})
            self.close_connection = True
            return
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._answer(400, problem({"$": ["The request body is not valid JSON."]}))
            return
        try:
            status, payload = self.app.handle(method, split.path, query, self.headers, body)
        except _BadRequest as exc:
            status, payload = 400, problem(exc.errors)
        except (ValueError, TypeError, AttributeError) as exc:
            status, payload = 400, {"message": str(exc)}
        except Exception:
            logger.exception("sandbox: unhandled error on {} {}", method, split.path)
            status, payload = 500, {"message": "sandbox error"}
        self._answer(status, payload)

    def _answer(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        is_problem = isinstance(payload, dict) and "traceId" in payload
        self.send_response(status)
        self.send_header(
            "Content-Type",
            "application/problem+json; charset=utf-8" if is_problem else "application/json; charset=utf-8",
        )
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # benchmarks open many connections at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client left before a (slow) answer: its problem, not a sandbox error worth a traceback
        super().handle_error(request, client_address)


class SandboxServer:
    """A Sandbox bound to a socket; start() serves it in a background thread."""

    def __init__(self, settings: SandboxSettings | None = None, host: str = "127.0.0.1", port: int = 0):
        self.app = Sandbox(settings or SandboxSettings())
        handler = type("SandboxHandler", (_Handler,), {"app": self.app})
        try:
            self._httpd = _Server((host, port), handler)
        except OSError:
            self.app.close()  # do not leave the callback threads behind
            raise
        self.host, self.port = self._httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> SandboxServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="sandbox-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()
        self.app.close()


def run_sandbox(
    settings: SandboxSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 8100,
    on_ready: Callable[[SandboxServer], None] | None = None,
) -> None:
    """Serve until Ctrl-C or SIGTERM (the CLI's entry point). SIGTERM is only hooked from the main thread."""
    server = SandboxServer(settings, host, port).start()
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if on_ready is not None:
        on_ready(server)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
