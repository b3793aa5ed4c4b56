"""The one place that reads uvicorn's httptools protocol internals (receiver.http subclasses it). The pin in
pyproject.toml names the versions this was written for; tests/test_uvicorn_adapter.py fails when an
upgrade renames or reshapes what it relies on.

receiver.http overrides these HttpToolsProtocol methods, each calling the original first or last:
connection_made, connection_lost, on_message_begin, on_headers_complete, on_message_complete,
on_response_complete (OVERRIDDEN). It reads the protocol's `loop`, `transport`, `app_state` (uvicorn's
lifespan state), `cycle` (the request being read or answered) and `pipeline` (requests queued behind the
one being answered: (cycle, app) pairs, newest first), and a cycle's `response_started` and `more_body`.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HttpToolsProtocol", "OVERRIDDEN", "app_state", "queued_behind", "answer_started", "awaiting_body"]

OVERRIDDEN = (
    "connection_made",
    "connection_lost",
    "on_message_begin",
    "on_headers_complete",
    "on_message_complete",
    "on_response_complete",
)


def app_state(protocol: HttpToolsProtocol) -> dict[str, Any]:
    """The app's lifespan state, as handed to every protocol instance."""
    return protocol.app_state


def queued_behind(protocol: HttpToolsProtocol) -> bool:
    """The request whose head was just read waits behind another one still being answered."""
    pipeline = protocol.pipeline
    return bool(pipeline) and pipeline[0][0] is protocol.cycle


def answer_started(protocol: HttpToolsProtocol) -> bool:
    """An answer to the current request has begun."""
    cycle = protocol.cycle
    return cycle is not None and cycle.response_started


def awaiting_body(protocol: HttpToolsProtocol) -> bool:
    """The current request (a queued one that has just started) still has body to read."""
    cycle = protocol.cycle
    return cycle is not None and getattr(cycle, "more_body", False)
