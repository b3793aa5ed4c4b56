"""`azamrecon donations create` against the real sandbox over loopback, on SQLite and MariaDB: the donation
printed and folded, and every refusal one line on stderr with a non-zero exit."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from click.testing import CliRunner

from pipeline.errors import AzamPayValidationError
from sandbox.testing import running_sandbox
from tests.builders import add_patient
from tests.servers import config_settings, write_config
from tests.test_checkout import MSISDN, azampay_overrides, donation


@pytest.fixture
def sandbox():
    with running_sandbox() as handle:
        yield handle


def _cli(config_path, *args):
    from jobs.cli import cli

    return CliRunner().invoke(cli, [*args, "--config", str(config_path)], catch_exceptions=False)


def test_cli_create_prints_the_donation_and_folds(backend, sandbox, now):
    path = write_config(backend.tmp_path / "cli.yaml", config_settings(backend, **azampay_overrides(sandbox)))
    patient = add_patient(backend.engine, now)
    result = _cli(
        path,
        "donations",
        "create",
        "--patient",
        str(patient),
        "--amount",
        "30000",
        "--support-amount",
        "5000",
        "--msisdn",
        "+255758285812",
        "--provider",
        "mpesa",
    )
    assert result.exit_code == 0, result.output
    [txn] = sandbox.transactions()
    assert f"transactionId {txn['transaction_id']}" in result.output
    assert re.search(r"^donation 1$", result.output, re.M) and re.search(
        r"^reference RHCI-DN-1-\d{14}$", result.output, re.M
    )
    assert "status PENDING" in result.output
    row = donation(backend, 1)
    assert (row.patient_amount, row.support_amount, row.transaction_id) == (
        Decimal("25000"),
        Decimal("5000"),
        txn["transaction_id"],
    )
    assert row.last_event_id is not None  # folded

    general = _cli(
        path, "donations", "create", "--general", "--amount", "1000", "--msisdn", MSISDN, "--provider", "Airtel"
    )
    assert general.exit_code == 0, general.output
    assert donation(backend, 2).patient_id is None


def test_cli_create_errors_are_one_line_and_non_zero(backend, sandbox, now):
    path = write_config(backend.tmp_path / "cli.yaml", config_settings(backend, **azampay_overrides(sandbox)))
    patient = add_patient(backend.engine, now)
    base = ["donations", "create", "--amount", "1000", "--msisdn", MSISDN, "--provider", "Mpesa"]
    for args, text in [
        (base, "--patient is required"),
        (base + ["--patient", str(patient), "--general"], "exclude each other"),
        (
            [
                "donations",
                "create",
                "--patient",
                str(patient),
                "--amount",
                "1000",
                "--msisdn",
                "12345",
                "--provider",
                "Mpesa",
            ],
            "msisdn",
        ),
        (base + ["--patient", str(patient), "--amount", "1.234"], "at most 2 decimal places"),
    ]:
        result = _cli(path, *args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr
    assert backend.scalar("SELECT COUNT(*) FROM donations") == 0

    # refused by AzamPay: the donation exists, is FAILED after the fold, and the reason is the one error line
    path = write_config(
        backend.tmp_path / "usd.yaml",
        config_settings(backend, **azampay_overrides(sandbox), **{"donations.charge_currency": "USD"}),
    )
    result = _cli(path, *base, "--patient", str(patient))
    assert result.exit_code == AzamPayValidationError.exit_code
    assert "status FAILED" in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "The currency must be TZS." in lines[0], result.stderr
    assert donation(backend, 1).status == "FAILED"
