"""Shared by the hostile-traffic tests (test_hostile_http.py, test_hostile_input.py)."""

from __future__ import annotations

import time

import httpx
import pytest

KEY = "portal-key-Hostile-51"
STATUS = "/api/v1.0/donors/payment/azampay/status/"
CHECKOUT = "/api/v1.0/donors/payment/azampay/checkout/"
CALLBACK = "/api/v1.0/donors/payment/azampay/callback/"
FAST = 0.5  # seconds: what "answered fast" means for /healthz and a callback
DATABASES = ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)]


def backend_for(db: str, request):
    return request.getfixturevalue("sqlite_backend" if db == "sqlite" else "mysql_backend")


def timed(call) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started
