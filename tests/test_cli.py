"""Every command on bad input: one line on stderr, a non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from tests.builders import add_patient
from tests.servers import config_settings, write_config

COUNTED = ("patients", "donations", "payment_events", "funding_credits", "anomalies")

BAD = [
    (["init", "--config", "{missing}"], 2, "config file not found"),
    (["serve", "--port", "70000"], 2, "70000"),
    (["fold", "--max-batches", "0"], 2, "--max-batches"),
    (["poll", "--donation", "999"], 3, "donation 999 not found"),
    (["poll", "--limit", "-1"], 2, "--limit"),
    (["rebuild", "--as-of", "yesterday"], 2, "--as-of"),
    (["rebuild", "--check", "--as-of", "2026-01-01"], 2, "cannot be combined"),
    (["report", "--date", "2026-02-30"], 2, "--date"),
    (["report", "--format", "xml"], 2, "xml"),
    (["patients", "add", "--name", "A", "--funding-required", "-5"], 2, "--funding-required"),
    (["patients", "add", "--name", "A", "--funding-required", "1.234"], 2, "2 decimal places"),
    (["patients", "add", "--name", "A", "--funding-required", "1e400"], 2, "--funding-required"),
    (["patients", "add", "--name", "A", "--funding-required", "100000000000000"], 2, "below"),
    (["rebuild", "--as-of", "2026-01-01", "--output", "/nonexistent-dir/x.json"], 2, "--output"),
    (["patients", "show", "999"], 3, "patient 999 not found"),
    (
        ["donations", "create", "--patient", "1", "--amount", "abc", "--msisdn", "0758285812", "--provider", "Mpesa"],
        2,
        "--amount",
    ),
    (
        ["donations", "create", "--patient", "1", "--amount", "1000", "--msisdn", "12345", "--provider", "Mpesa"],
        2,
        "msisdn",
    ),
    (
        [
            "donations",
            "create",
            "--patient",
            "1",
            "--amount",
            "1000",
            "--msisdn",
            "0758285812",
            "--provider",
            "Vodacom",
        ],
        2,
        "provider",
    ),
    (
        [
            "donations",
            "create",
            "--patient",
            "999",
            "--amount",
            "1000",
            "--msisdn",
            "0758285812",
            "--provider",
            "Mpesa",
        ],
        3,
        "patient 999",
    ),
    (["donations", "show", "999"], 3, "donation 999 not found"),
    (["donations", "resolve", "999", "--status", "COMPLETED", "--note", "x"], 3, "donation 999 not found"),
    (["donations", "resolve", "1", "--status", "MAYBE", "--note", "x"], 2, "MAYBE"),
    (["donations", "list", "--status", "LOST"], 2, "LOST"),
    (["events", "show", "999"], 3, "event 999 not found"),
    (["events", "list", "--source", "fax"], 2, "fax"),
    (["events", "ingest", "{missing}"], 2, "missing.jsonl"),
    (["sandbox", "--outcome", "nonsense"], 2, "MSISDN=OUTCOME"),
    (["demo", "--dir", "{existing}"], 2, "already exists"),
]


def counts(backend) -> dict:
    return {table: backend.scalar(f"SELECT COUNT(*) FROM {table}") for table in COUNTED}


@pytest.mark.parametrize("args,code,text", BAD, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _, _) in enumerate(BAD)])
def test_bad_input_is_one_line_and_writes_nothing(sqlite_backend, tmp_path, args, code, text, now):
    add_patient(sqlite_backend.engine, now)
    config = write_config(tmp_path / "config.yaml", config_settings(sqlite_backend))
    (tmp_path / "existing").mkdir()
    args = [a.format(missing=str(tmp_path / "missing.jsonl"), existing=str(tmp_path / "existing")) for a in args]
    if "--config" not in args:
        args = args + ["--config", str(config)]
    before = counts(sqlite_backend)
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    assert text in errors[0]
    assert counts(sqlite_backend) == before


def test_donations_create_prints_json(sqlite_backend, now):
    """`donations create` prints data, so it takes --format like the other commands that do."""
    import json

    from sandbox.testing import running_sandbox
    from tests.test_checkout import azampay_overrides

    patient = add_patient(sqlite_backend.engine, now)
    with running_sandbox() as sandbox:
        config = write_config(
            sqlite_backend.tmp_path / "cli.yaml", config_settings(sqlite_backend, **azampay_overrides(sandbox))
        )
        result = CliRunner().invoke(
            cli,
            [
                "donations",
                "create",
                "--patient",
                str(patient),
                "--amount",
                "1000",
                "--msisdn",
                "0758285812",
                "--provider",
                "Mpesa",
                "--format",
                "json",
                "--config",
                str(config),
            ],
            catch_exceptions=False,
        )
        [transaction] = sandbox.transactions()
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["donation_id"], data["charge_amount"], data["charge_currency"], data["status"]) == (
        1,
        "1000",
        "TZS",
        "PENDING",
    )
    assert data["transaction_id"] == transaction["transaction_id"] and data["reference"].startswith("RHCI-DN-1-")
