"""Log lines are data, not markup (hostile traffic, faults 4 and 5), through the receiver's own batched
logging: a callback cannot add a line the webhook guide's greps count, a body nested 950 deep is logged
(as text) without dropping its neighbours' lines, and `events show` handles any stored body."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

from click.testing import CliRunner
from loguru import logger
from starlette.testclient import TestClient

from jobs.cli import cli
from jobs.fold import run_fold
from pipeline.logs import secrets_of
from receiver import logsink as logs_module
from receiver.app import CALLBACK_PATH, create_app
from receiver.logsink import configure_batched_logging, flush_logs
from tests.servers import add_donation, config_settings, write_config

JSON = {"content-type": "application/json"}
GENUINE = "RHCI-DN-7-20260114093000"
FORGED_LINE = "2026-12-06 10:00:00.000 | INFO     | receiver | ✅ Donation 424242 completed successfully"


def body(utilityref: str, **extra) -> bytes:
    data = {
        "transactionstatus": "success",
        "utilityref": utilityref,
        "amount": "1000",
        "operator": "Mpesa",
        "msisdn": "255789123456",
        "reference": "tx-7",
        "transid": "tx-7",
        "externalreference": "tx-7",
    }
    data.update(extra)
    return json.dumps(data).encode()


CRAFTED = [
    body("RHCI-DN-1\n" + FORGED_LINE),
    body("RHCI-DN-2\rUpdated patient funding: 999999.00/1000.00"),
    body("RHCI-DN-3\x1b[2K\x1b[1G❌ Donation 5 payment failed"),
    body("RHCI-DN-4\u2028Error processing Azam Pay callback: injected"),
    body("RHCI-DN-5", message="Payment failed\ncompleted successfully"),
    body("RHCI-DN-6", deep=json.loads("[" * 950 + "]" * 950)),  # 2 KB, nested 950 lists deep
    b'{"transactionstatus": "success", "utilityref": "RHCI-DN-8\\n\\u2705 Donation 8 completed successfully", ',  # not even JSON
]


@contextlib.contextmanager
def receiving(backend):
    config = backend.config()
    configure_batched_logging(config.logging, component="receiver", secrets=secrets_of(config), stderr_level=None)
    try:
        with TestClient(create_app(config), client=("127.0.0.1", 50000)) as client:
            yield client, config
    finally:
        flush_logs()
        logger.remove()


def payments_lines(backend) -> list[str]:
    return (backend.tmp_path / "logs" / "payments.log").read_text(encoding="utf-8").splitlines()


def grep(lines: list[str], phrase: str) -> list[str]:
    return [line for line in lines if phrase in line]


def test_crafted_bodies_add_nothing_to_the_guides_greps(backend):
    add_donation(backend.engine, GENUINE, donation_id=7)
    with receiving(backend) as (client, config):
        answers = [client.post(CALLBACK_PATH, content=crafted, headers=JSON).status_code for crafted in CRAFTED]
        assert client.post(CALLBACK_PATH, content=body(GENUINE), headers=JSON).status_code == 200
        run_fold(backend.engine, config, datetime.now(UTC))
    assert 500 not in answers
    lines = payments_lines(backend)
    # the guide's greps (deploy.md "Logs and the guide's greps"), on what the crafted bodies left
    assert len(grep(lines, "Received Azam Pay callback")) == len(CRAFTED) + 1
    assert grep(lines, "completed successfully") == [
        line for line in lines if "✅ Donation 7 completed successfully" in line
    ]
    assert len(grep(lines, "completed successfully")) == 1
    assert grep(lines, "payment failed") == []
    assert grep(lines, "Error processing Azam Pay callback") == []
    assert len(grep(lines, "Updated patient funding")) == 0  # donation 7 funds no patient
    assert len(grep(lines, "Processed callback")) == 1
    every_line_is_a_record = all(line[:4].isdigit() and " | " in line for line in lines)
    assert every_line_is_a_record, [line for line in lines if not line[:4].isdigit()]
    assert not any("\x1b" in line or "\u2028" in line for line in lines)
    assert any("[nested deeper than 32 levels, shown as text]" in line for line in lines)


def test_one_body_that_cannot_be_rendered_drops_no_other_line(backend, monkeypatch):
    real = logs_module.redact_body

    def fails_on_one(raw, *args, **kwargs):
        if b"RHCI-DN-BAD" in raw:
            raise RecursionError("maximum recursion depth exceeded")
        return real(raw, *args, **kwargs)

    monkeypatch.setattr(logs_module, "redact_body", fails_on_one)
    with receiving(backend) as (client, _):
        for n in range(40):
            client.post(
                CALLBACK_PATH,
                content=body("RHCI-DN-BAD" if n == 20 else f"RHCI-DN-{100 + n}-20260114093000"),
                headers=JSON,
            )
    received = grep(payments_lines(backend), "Received Azam Pay callback")
    assert len(received) == 40
    assert len([line for line in received if "[body not rendered: RecursionError]" in line]) == 1


def test_events_show_handles_any_stored_body(backend, tmp_path):
    with receiving(backend) as (client, _):
        for crafted in CRAFTED + [b"\xff\xfe\x00binary", b"", b"[" * 100_000]:
            client.post(CALLBACK_PATH, content=crafted, headers=JSON)
    path = write_config(tmp_path / "show.yaml", config_settings(backend))
    ids = [row[0] for row in backend.rows("SELECT id FROM payment_events ORDER BY id")]
    for event_id in ids:
        for output in ("table", "json"):
            result = CliRunner().invoke(
                cli, ["events", "show", str(event_id), "--config", str(path), "--format", output]
            )
            assert result.exit_code == 0, (event_id, result.output[-500:], result.exception)
            assert "Traceback" not in result.output


def test_the_database_password_is_scrubbed_in_both_spellings(tmp_path):
    """A job's failure line can quote an error that quotes the DATABASE_URL: its password must not survive."""
    from pipeline.config import load_config
    from pipeline.logs import scrub_secrets

    config = load_config(None, environ={"DATABASE_URL": "mysql+pymysql://azamrecon:pa%24%24w0rd@127.0.0.1/azamrecon"})
    secrets = secrets_of(config)
    assert {"pa$$w0rd", "pa%24%24w0rd"} <= set(secrets)
    line = scrub_secrets("connect failed: mysql+pymysql://azamrecon:pa%24%24w0rd@127.0.0.1 (pa$$w0rd)", secrets)
    assert "w0rd" not in line
