"""uvicorn's httptools protocol with one send() per response instead of two, and read timeouts.

uvicorn writes a response's head (on `http.response.start`) and its body (on `http.response.body`) to
the transport separately, and uvloop sends each write at once, holding the GIL during the system call.
Under load those two sends were a large share of the receiver's GIL time (py-spy --gil).
Writes made in one event-loop iteration are joined here and sent together at the end of it.

uvicorn times out only idle keep-alive connections: a client that connects and sends nothing, or sends
its headers or body a byte at a time, held its connection (and a callback its request task) forever.
Here a request's head must be complete within receiver.header_timeout_seconds (of connecting, for a
connection's first request; of its first byte, for the next ones), and its body within
receiver.body_timeout_seconds of the head; otherwise the connection is closed (with a 408 when a request
had begun). Deadlines, not idle timers: dripping a byte at a time does not extend them. The receiver app hands the two figures over through
uvicorn's lifespan state (READ_TIMEOUTS_KEY).
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

from receiver.uvicorn_adapter import HttpToolsProtocol, answer_started, app_state, awaiting_body, queued_behind

READ_TIMEOUTS_KEY = "azamrecon.read_timeouts"


class ReadTimeouts(NamedTuple):
    head: float
    body: float


DEFAULT_READ_TIMEOUTS = ReadTimeouts(10.0, 10.0)  # an app that names none still gets them
_TIMEOUT_BODY = b'{"status":"error","detail":"the request was not received in time; not stored"}'
_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
    % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class CoalescingTransport:
    """Delegates to the real transport; `write` is buffered until the loop's next iteration."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()  # a response written just before close() still goes out
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's protocol, overriding the hooks receiver.uvicorn_adapter.OVERRIDDEN names."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timeouts: ReadTimeouts = app_state(self).get(READ_TIMEOUTS_KEY, DEFAULT_READ_TIMEOUTS)
        self._read_deadline: asyncio.TimerHandle | None = None
        self._reading: str | None = None  # "idle" (nothing sent yet), "head" or "body"

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._arm(self.read_timeouts.head, "idle")  # a connection that never sends a byte is cut too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._reading == "idle" and self._read_deadline is not None:
            self._reading = "head"  # a connection's first request: its head is due within the timeout of connecting
        else:
            self._arm(self.read_timeouts.head, "head")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if queued_behind(self):
            self._disarm()  # queued behind another request: its body is read later, when its turn comes
        else:
            self._arm(self.read_timeouts.body, "body")

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # a request queued behind the one just answered starts now: its body is due
        if awaiting_body(self) and self._read_deadline is None and not self.transport.is_closing():
            self._arm(self.read_timeouts.body, "body")

    def _arm(self, seconds: float, reading: str) -> None:
        self._disarm()
        self._reading = reading
        self._read_deadline = self.loop.call_later(seconds, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        # a 408 only where no answer to this request has begun (an app may answer before it reads the body)
        if self._reading == "head" or (self._reading == "body" and self.cycle is not None and not answer_started(self)):
            transport.write(_TIMEOUT_ANSWER)
        transport.close()  # the app's receive() now gets http.disconnect: an unfinished body is not stored
