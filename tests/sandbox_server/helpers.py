"""What the sandbox tests share: the fixtures directory, a number and reference, a recording callback receiver, a payment."""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FIXTURES = Path(__file__).parents[1] / "fixtures" / "azampay"
LIVE_KEYS = set(json.loads((FIXTURES / "callback_live_shape_success.json").read_bytes()))
MSISDN = "0628630936"
EXTERNAL_ID = "RHCI-DN-42-20260114093012"
KNOWN_STATUSES = {"success", "successful", "completed", "failure", "failed", "fail", "cancelled", "canceled"}


def fixture(name: str):
    return json.loads((FIXTURES / name).read_bytes())


class Receiver:
    """A tiny callback endpoint that records every POST body; `delay` makes it slow to answer."""

    def __init__(self, delay: float = 0.0):
        self.bodies: list[dict] = []
        self.arrived: list[float] = []
        self.delay = delay
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._cond:
                    receiver.bodies.append(json.loads(body))
                    receiver.arrived.append(time.monotonic())
                    receiver._cond.notify_all()
                time.sleep(receiver.delay)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/api/v1.0/donors/payment/azampay/callback/"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.bodies) < count and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            return list(self.bodies)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def pay(client, outcome=None, msisdn=MSISDN, amount="25000", external_id=EXTERNAL_ID, extra=None):
    props = dict(extra or {})
    if outcome:
        props["sandbox_outcome"] = outcome
    return client.mno_checkout(
        msisdn, Decimal(amount), external_id, "Halopesa", additional_properties=props
    ).transaction_id
