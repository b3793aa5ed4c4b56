"""Contract of receiver.uvicorn_adapter with the installed uvicorn: the HttpToolsProtocol hooks receiver.http
overrides and the internals it reads still exist with the shapes it was written for, and the read deadline
still cuts a slow request on a real server. A uvicorn upgrade that breaks receiver.http fails here first."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.server import ServerState

from receiver import uvicorn_adapter
from receiver.http import READ_TIMEOUTS_KEY, CoalescingHttpToolsProtocol, ReadTimeouts
from receiver.uvicorn_adapter import HttpToolsProtocol

HOOK_PARAMETERS = {
    "connection_made": ["self", "transport"],
    "connection_lost": ["self", "exc"],
    "on_message_begin": ["self"],
    "on_headers_complete": ["self"],
    "on_message_complete": ["self"],
    "on_response_complete": ["self"],
}


def test_the_overridden_hooks_exist_with_their_signatures():
    assert set(uvicorn_adapter.OVERRIDDEN) == set(HOOK_PARAMETERS)
    for name, parameters in HOOK_PARAMETERS.items():
        hook = getattr(HttpToolsProtocol, name)
        assert callable(hook), name
        assert list(inspect.signature(hook).parameters) == parameters, name
        assert name in vars(CoalescingHttpToolsProtocol), f"receiver.http no longer overrides {name}"


def test_the_constructor_and_the_state_it_sets():
    assert list(inspect.signature(HttpToolsProtocol.__init__).parameters)[:4] == [
        "self",
        "config",
        "server_state",
        "app_state",
    ]

    async def build():
        config = uvicorn.Config(_app, lifespan="off", log_level="warning")
        state = {READ_TIMEOUTS_KEY: ReadTimeouts(1.0, 2.0)}
        return CoalescingHttpToolsProtocol(config=config, server_state=ServerState(), app_state=state)

    protocol = asyncio.run(build())
    assert uvicorn_adapter.app_state(protocol)[READ_TIMEOUTS_KEY] == ReadTimeouts(1.0, 2.0)
    assert protocol.read_timeouts == ReadTimeouts(1.0, 2.0)
    assert isinstance(protocol.pipeline, deque) and not protocol.pipeline
    assert protocol.cycle is None and protocol.transport is None
    assert isinstance(protocol.loop, asyncio.AbstractEventLoop)
    assert uvicorn_adapter.queued_behind(protocol) is False
    assert uvicorn_adapter.answer_started(protocol) is False
    assert uvicorn_adapter.awaiting_body(protocol) is False


def test_a_cycle_has_the_flags_the_adapter_reads():
    parameters = inspect.signature(RequestResponseCycle.__init__).parameters
    assert {"scope", "transport", "flow", "message_event", "expect_100_continue", "keep_alive"} <= set(parameters)
    source = inspect.getsource(RequestResponseCycle.__init__)
    assert "self.response_started = False" in source
    assert "self.more_body = True" in source


async def _app(scope, receive, send):
    if scope["type"] != "http":
        return
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _exchange(*chunks: bytes, pause: float = 0.0) -> bytes:
    """What a real server with 0.3 s read timeouts answers to `chunks` (sent `pause` apart)."""

    async def main() -> bytes:
        config = uvicorn.Config(_app, lifespan="off", log_level="warning")
        state = ServerState()
        app_state = {READ_TIMEOUTS_KEY: ReadTimeouts(0.3, 0.3)}
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: CoalescingHttpToolsProtocol(config=config, server_state=state, app_state=app_state),
            "127.0.0.1",
            0,
        )
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(pause)
            answer = await asyncio.wait_for(reader.read(), timeout=5)  # until the server closes
            writer.close()
            return answer
        finally:
            server.close()
            for connection in list(state.connections):
                connection.shutdown()
            await server.wait_closed()

    return asyncio.run(main())


def test_a_head_not_finished_in_time_is_answered_408_and_closed():
    answer = _exchange(b"POST /x HTTP/1.1\r\nHost: a\r\n")
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


def test_a_body_not_finished_in_time_is_answered_408_and_closed():
    answer = _exchange(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12")
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


def test_a_silent_connection_is_closed_without_an_answer():
    assert _exchange() == b""


@pytest.mark.parametrize("pause", [0.0, 0.1])
def test_a_whole_request_is_answered_in_one_piece(pause):
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 4\r\n\r\n"
    answer = _exchange(head, b"abcd", pause=pause)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok")
    assert answer.count(b"HTTP/1.1") == 1


def test_a_request_queued_behind_another_gets_its_own_body_deadline():
    first = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n1"
    second = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12"
    answer = _exchange(first + second)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.count(b"HTTP/1.1 408 Request Timeout") == 1
