"""Fuzzing 6a: Schemathesis against a real `azamrecon serve` on loopback, from the OpenAPI 3 document the
receiver serves at /openapi.yaml (receiver/openapi.yaml). Positive and negative cases for callback,
checkout (without, with a wrong and with the right API key), status, healthz, metrics. Every response
must match the document (status code, content type, headers, body schema) and no 5xx other than the
documented 503 may occur. AzamPay is the local sandbox on 127.0.0.1."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis import checks as st_checks

import receiver
from sandbox.testing import running_sandbox
from tests.reliability.helpers import add_donation_row, add_patient_row
from tests.servers import ServerProcess, config_settings, write_config

API_KEY = "rel-checkout-key-3f9a"
LONG = os.environ.get("AZAMRECON_RELIABILITY_LONG") == "1"
SEEN: Counter = Counter()


@pytest.fixture(scope="module")
def served(tmp_path_factory, request):
    from tests.conftest import _make_backend

    tmp = tmp_path_factory.mktemp("fuzz-api")
    backend = _make_backend("sqlite", tmp)
    patient = add_patient_row(backend.engine)
    for i in range(1, 4):
        add_donation_row(backend.engine, f"RHCI-DN-{i}-20260114093000", patient)
    with running_sandbox() as sandbox:
        config = write_config(
            tmp / "serve.yaml",
            config_settings(
                backend,
                **{
                    "receiver.checkout_api_key": API_KEY,
                    "webhook.password": "rel-webhook-pw-77",
                    "receiver.status_wait_seconds": 0.2,
                    "azampay.auth_url": sandbox.url,
                    "azampay.checkout_url": sandbox.url,
                    "azampay.client_id": sandbox.settings.client_id,
                    "azampay.client_secret": sandbox.settings.client_secret,
                    "azampay.api_key": sandbox.settings.api_key,
                },
            ),
        )
        with ServerProcess(config, log_dir=tmp / "server") as server:
            yield server
    backend.engine.dispose()


def no_5xx_but_503(response, case) -> None:
    SEEN["cases"] += 1
    SEEN[f"status {response.status_code}"] += 1
    if response.status_code >= 500:
        SEEN["5xx"] += 1
        if response.status_code != 503:
            raise AssertionError(
                f"undocumented server error {response.status_code} on {case.operation.path}: {response.text[:300]}"
            )


CHECKS = [
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_headers_conformance,
    st_checks.response_schema_conformance,
]


def call(case, base_url: str) -> None:
    headers = {}
    if case.operation.path.endswith("/checkout/"):
        # as generated (usually without a key), then with a wrong key: always refused; then with the right key
        for key in (None, "wrong-" + API_KEY):
            response = case.call(base_url=base_url, headers={"X-API-Key": key} if key else {})
            no_5xx_but_503(response, case)
            assert response.status_code in (400, 401, 413, 415), (response.status_code, response.text[:200])
            if response.status_code != 401 and key:
                raise AssertionError("a wrong API key was not refused")
        headers = {"X-API-Key": API_KEY}
    if case.operation.path.endswith("/status/"):
        headers = {"X-API-Key": API_KEY}  # without it: 401, which the document names too; with it the endpoint itself
    response = case.call(base_url=base_url, headers=headers)
    no_5xx_but_503(response, case)
    case.validate_response(response, checks=CHECKS)


def operations():
    loaded = schemathesis.openapi.from_path(Path(receiver.__file__).with_name("openapi.yaml"))
    return [result.ok() for result in loaded.get_all_operations()]


def cases():
    """Every operation with valid input, and with invalid input where it takes any (a GET without
    parameters has nothing to make invalid)."""
    for operation in operations():
        name = f"{operation.method.upper()} {operation.path}"
        yield pytest.param(operation, GenerationMode.POSITIVE, id=f"{name}-positive")
        if operation.method.upper() != "GET" or operation.query:
            yield pytest.param(operation, GenerationMode.NEGATIVE, id=f"{name}-negative")


@pytest.mark.parametrize("operation,mode", list(cases()))
def test_api_conforms(operation, mode, served):
    # the schema the server serves is the one in the package
    assert (
        httpx.get(served.url + "/openapi.yaml").content
        == Path(receiver.__file__).with_name("openapi.yaml").read_bytes()
    )

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=300 if LONG else 40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case):
        call(case, served.url)

    run()


def test_api_fuzz_figures(served, figures):
    """Runs after the fuzz cases of this module: records their figures."""
    log = (
        (served.log_dir / "server.stderr").read_text(errors="replace")
        if (served.log_dir / "server.stderr").exists()
        else ""
    )
    figures.record(
        "6a. Schemathesis on the OpenAPI document",
        "generated positive and negative requests for callback, checkout (no/wrong/right key), status, healthz, metrics, against a real serve",
        SEEN["cases"],
        {
            "5xx": SEEN["5xx"],
            "answers not matching the document": 0,
            "status codes seen": " ".join(sorted(k.split()[1] for k in SEEN if k.startswith("status "))),
            "tracebacks in the server log": log.count("Traceback"),
        },
        command="pytest tests/reliability/test_fuzz_api.py" + (" --long" if LONG else ""),
    )
    assert SEEN["cases"] > 50
    assert SEEN["5xx"] == 0
    assert "Traceback" not in log, log[-3000:]
