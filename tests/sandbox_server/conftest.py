"""Fixtures of the sandbox tests: a recording callback receiver, the sandbox posting to it, a client."""

from __future__ import annotations

import pytest

from pipeline.azampay import AzamPayClient
from sandbox.testing import running_sandbox
from tests.sandbox_server.helpers import Receiver


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def sandbox(receiver):
    with running_sandbox(callback_url=receiver.url, webhook_password="hook-pass", delay_seconds=0.3) as handle:
        yield handle


@pytest.fixture
def client(sandbox):
    return AzamPayClient(sandbox.azampay_config(), backoff_factor=0)
