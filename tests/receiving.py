"""A receiver app under starlette's TestClient, and callback bodies, for the receiver's tests."""

from __future__ import annotations

import contextlib
import json

from starlette.testclient import TestClient

from receiver.app import create_app
from tests.conftest import fixture_bytes

JSON = {"content-type": "application/json"}
GUIDE = "callback_guide_example.json"
GUIDE_REF = "RHCI-DN-999-20251219120000"


@contextlib.contextmanager
def receiver(backend, client=("127.0.0.1", 50000), **overrides):
    """A running receiver app (lifespan started: writer thread up) on the backend's database."""
    app = create_app(backend.config(**overrides))
    with TestClient(app, client=client) as test_client:
        yield test_client


def callback(**changes) -> bytes:
    data = json.loads(fixture_bytes(GUIDE))
    data.update(changes)
    return json.dumps(data).encode()
