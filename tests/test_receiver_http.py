"""receiver/http.py: a response's head and body leave in one send(); nothing written is lost or reordered.

The real protocol is exercised end to end by tests/test_receiver_server.py (a real `azamrecon serve`);
these tests pin the transport wrapper's rules on a real event loop with a transport that records."""

from __future__ import annotations

import asyncio

from receiver.http import CoalescingTransport


class RecordingTransport:
    def __init__(self):
        self.sent: list[bytes] = []
        self.closed = False
        self.extra = {"peername": ("127.0.0.1", 5555)}

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name, default=None):
        return self.extra.get(name, default)


def _run(steps):
    async def main():
        real = RecordingTransport()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        await steps(transport, real)
        return real

    return asyncio.run(main())


def test_writes_of_one_iteration_leave_in_one_send_in_order():
    async def steps(transport, real):
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(b"ok")
        assert real.sent == []  # nothing sent before the loop turns
        await asyncio.sleep(0)
        assert real.sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
        transport.write(b"next")
        await asyncio.sleep(0)

    assert _run(steps).sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", b"next"]


def test_close_sends_what_was_written_first():
    async def steps(transport, real):
        transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        transport.close()
        await asyncio.sleep(0)  # the scheduled flush finds nothing left and does not write after close

    real = _run(steps)
    assert real.sent == [b"HTTP/1.1 400 Bad Request\r\n\r\n"] and real.closed


def test_a_transport_closed_underneath_drops_the_pending_bytes_without_error():
    async def steps(transport, real):
        transport.write(b"late")
        real.closed = True  # the peer went away (uvicorn then discards the response too)
        await asyncio.sleep(0)

    assert _run(steps).sent == []


def test_everything_else_is_the_real_transport():
    async def steps(transport, real):
        assert transport.get_extra_info("peername") == ("127.0.0.1", 5555)
        assert transport.is_closing() is False

    _run(steps)
