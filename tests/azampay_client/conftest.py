"""Fixtures of the AzamPayClient tests: the real sandbox over loopback, a settable clock, captured log lines."""

from __future__ import annotations

import pytest
from loguru import logger

from pipeline.azampay import AzamPayClient
from sandbox.testing import running_sandbox
from tests.azampay_client.helpers import Clock


@pytest.fixture
def sandbox():
    with running_sandbox() as handle:
        yield handle


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def client(sandbox, clock):
    return AzamPayClient(sandbox.azampay_config(get_retries=2), clock=clock, backoff_factor=0)


@pytest.fixture
def log_lines():
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    yield lines
    logger.remove(sink)
