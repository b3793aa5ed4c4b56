"""Backfill import (jobs.ingest, `azamrecon events ingest`): legacy Django payments.log, our own log, JSON lines."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from loguru import logger
from sqlalchemy import select

from jobs import ingest as ingest_module
from jobs.cli import cli
from jobs.fold import run_fold
from jobs.ingest import ingest_file
from pipeline.db import transaction
from pipeline.import_lines import parse_timestamp
from pipeline.models import PaymentEvent
from pipeline.store.donations import create_donation, create_patient
from tests.builders import callback_body
from tests.servers import write_config

LEGACY_LOG = Path(__file__).parent / "fixtures" / "legacy" / "payments.log"
PASSWORD = "legacy-hook-pw-7781"
WRONG_PASSWORD = "wrong-hook-pw-0000"
CREATED = datetime(2025, 12, 19, 11, 55, 0, tzinfo=UTC)
LEGACY_COUNTS = {"read": 20, "imported": 7, "duplicates": 0, "skipped": 10, "errors": 3}


def utc(*parts) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def legacy_donations(engine) -> list[int]:
    """Donations 1..5 as the legacy portal had them (references RHCI-DN-{id}-20251219115500)."""
    amounts = ["25000", "10000", "15000", "5000", "25000"]
    with transaction(engine) as session:
        patient = create_patient(session, name="Amina", funding_required=Decimal("100000"), now=CREATED).id
        ids = []
        for amount in amounts:
            donation = create_donation(
                session,
                patient_id=patient,
                amount=Decimal(amount),
                currency="TZS",
                charge_amount=Decimal(amount),
                charge_currency="TZS",
                msisdn="0758285812",
                provider="Mpesa",
                reference_prefix="RHCI-DN",
                now=CREATED,
            )
            assert donation.external_reference == f"RHCI-DN-{donation.id}-20251219115500"
            ids.append(donation.id)
    assert ids == [1, 2, 3, 4, 5]
    return ids


def events(engine) -> list[PaymentEvent]:
    with transaction(engine) as session:
        return list(session.scalars(select(PaymentEvent).order_by(PaymentEvent.id)))


def test_legacy_django_log_imports_with_line_times_typed_fields_and_auth(backend, now):
    legacy_donations(backend.engine)
    config = backend.config(**{"webhook.password": PASSWORD})
    counts = ingest_file(backend.engine, config, LEGACY_LOG, now)
    assert counts == LEGACY_COUNTS

    rows = events(backend.engine)
    assert [e.source for e in rows] == ["import"] * 7
    assert [e.received_at for e in rows] == [
        utc(2025, 12, 19, 12, 0, 0, 123000),
        utc(2025, 12, 19, 12, 5, 10),
        utc(2025, 12, 19, 12, 7, 30, 250000),
        utc(2025, 12, 19, 12, 15, 42, 900000),
        utc(2025, 12, 19, 12, 20, 0),  # 15:20:00+03:00
        utc(2025, 12, 19, 12, 0, 30, 456000),
        utc(2025, 12, 19, 12, 40, 5, 777000),
    ]
    first, failed, unverified, guide, cancelled, retry, mismatch = rows
    assert (
        first.utilityref,
        first.transaction_ref,
        first.status,
        first.amount,
        first.operator,
        first.msisdn,
        first.donation_hint,
    ) == (
        "RHCI-DN-1-20251219115500",
        "b0e3f1a2-7c55-4a8e-9d1c-0f5b2e6a9c11",
        "SUCCESS",
        Decimal("25000.00"),
        "Mpesa",
        "255758285812",
        "1",
    )
    assert first.parse_error is None and first.auth == "verified" and first.content_type == "application/json"
    body = json.loads(first.body)  # re-serialised JSON: None -> null, True -> true, nested properties kept
    assert body["user"] is None and body["submerchantAcc"] is None
    assert body["additionalProperties"] == {
        "donation_id": "1",
        "patient": {"id": 1, "name": "Amina's fund"},
        "tags": ["mobile", True],
        "retry": False,
    }
    assert (failed.status, failed.auth, failed.msisdn, failed.operator) == (
        "FAILED",
        "failed",
        "255688123456",
        "Airtel",
    )
    assert (unverified.status, unverified.status_raw, unverified.amount, unverified.auth) == (
        "SUCCESS",
        "SUCCESSFUL",
        Decimal("15000.00"),
        "unverified",
    )
    assert (guide.utilityref, guide.auth) == ("RHCI-DN-999-20251219120000", "unverified")
    assert (cancelled.status, cancelled.donation_hint, cancelled.auth) == ("CANCELLED", "4", "verified")
    assert json.loads(cancelled.body)["additionalProperties"]["flags"] == {
        "first": True,
        "recurring": False,
        "note": None,
    }
    assert retry.auth == "verified" and json.loads(retry.body)["additionalProperties"]["retry"] is True
    assert (mismatch.amount, mismatch.msisdn) == (Decimal("24000.00"), "255622334455")
    assert json.loads(first.headers) == {"import-file": "payments.log", "import-line": 2}

    # importing the same file again adds nothing
    assert ingest_file(backend.engine, config, LEGACY_LOG, now) == dict(LEGACY_COUNTS, imported=0, duplicates=7)
    assert len(events(backend.engine)) == 7

    # and the imported log folds like live callbacks
    run_fold(backend.engine, config, now)
    statuses = dict(backend.rows("SELECT id, status FROM donations"))
    assert statuses == {1: "COMPLETED", 2: "PENDING", 3: "PENDING", 4: "CANCELLED", 5: "REVIEW"}
    assert backend.scalar("SELECT completed_at FROM donations WHERE id = 1") is not None
    kinds = sorted(kind for (kind,) in backend.rows("SELECT kind FROM anomalies"))
    assert kinds == ["amount_mismatch", "duplicate", "unauthenticated", "unauthenticated", "unknown_reference"]


def test_auth_is_na_without_a_configured_password(backend, now):
    counts = ingest_file(backend.engine, backend.config(), LEGACY_LOG, now)
    assert counts["imported"] == 7
    assert {e.auth for e in events(backend.engine)} == {"n/a"}


def test_own_redacted_payments_log_imports(backend, now, tmp_path):
    from pipeline.logs import configure_logging, payments
    from pipeline.redact import redact_body

    config = backend.config(**{"webhook.password": PASSWORD, "logging.dir": str(tmp_path / "own")})
    configure_logging(config.logging, component="receiver", stderr_level=None)
    try:
        payments.info(
            "Received Azam Pay callback: {}",
            redact_body(callback_body("RHCI-DN-7-20260114093000", password=PASSWORD, transaction_id="tx-7")),
        )
        payments.info("Processed callback - External ID: RHCI-DN-7-20260114093000, Status: SUCCESS")
        payments.info(
            "Received Azam Pay callback: {}",
            redact_body(
                callback_body("RHCI-DN-8-20260114093000", status="failure", amount="500", transaction_id="tx-8")
            ),
        )
    finally:
        logger.remove()
    log = tmp_path / "own" / "payments.log"
    lines = log.read_text(encoding="utf-8").splitlines()
    assert PASSWORD not in log.read_text(encoding="utf-8")
    assert "'password': '***'," in lines[0]  # the sink's scrub keeps the quotes: the line stays a Python literal

    counts = ingest_file(backend.engine, config, log, now)
    assert counts == {"read": 3, "imported": 2, "duplicates": 0, "skipped": 1, "errors": 0}
    seven, eight = events(backend.engine)
    assert (seven.utilityref, seven.transaction_ref, seven.status, seven.amount, seven.msisdn) == (
        "RHCI-DN-7-20260114093000",
        "tx-7",
        "SUCCESS",
        Decimal("25000.00"),
        "255758285812",
    )
    assert seven.auth == "unverified"  # the redacted '***' is no credential, not a wrong one
    assert json.loads(seven.body)["password"] == "***"
    assert (eight.status, eight.amount, eight.auth) == ("FAILED", Decimal("500.00"), "unverified")
    # the stamp is local time in logging.timezone with its offset: read back as the same instant
    stamp = datetime.fromisoformat(lines[0][:29])
    assert lines[0][23:29] == "+03:00" and seven.received_at == stamp.astimezone(UTC)
    assert ingest_file(backend.engine, config, log, now)["imported"] == 0


def test_json_lines_envelopes_and_bare_bodies(backend, now, tmp_path):
    body = json.loads(callback_body("RHCI-DN-1-20251219115500", transaction_id="tx-1"))
    raw = '{"transactionstatus": "failure", "utilityref": "RHCI-DN-2-20251219115500", "amount": "10000"}'
    path = tmp_path / "callbacks.jsonl"
    lines = [
        json.dumps({"received_at": "2025-12-19T12:00:00.500000Z", "body": body}),
        json.dumps({"received_at": "2025-12-19T15:01:00+03:00", "body": raw}),
        json.dumps(dict(body, utilityref="RHCI-DN-3-20251219115500")),  # bare: received_at = now
        json.dumps({"level": "info", "msg": "not a callback"}),
        "[1, 2, 3]",
        '{"transactionstatus": "success", "utilityref": "RHCI-DN-4',  # torn
        json.dumps({"received_at": "yesterday", "body": body}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = backend.config()
    assert ingest_file(backend.engine, config, path, now) == {
        "read": 7,
        "imported": 3,
        "duplicates": 0,
        "skipped": 2,
        "errors": 2,
    }
    envelope, raw_event, bare = events(backend.engine)
    assert (
        envelope.received_at == utc(2025, 12, 19, 12, 0, 0, 500000)
        and envelope.utilityref == "RHCI-DN-1-20251219115500"
    )
    assert json.loads(envelope.body) == body
    assert (
        raw_event.body == raw.encode()
        and raw_event.received_at == utc(2025, 12, 19, 12, 1)
        and raw_event.status == "FAILED"
    )
    assert bare.received_at == now and bare.body == lines[2].encode() and bare.utilityref == "RHCI-DN-3-20251219115500"
    # a second import, later, still adds nothing (the bare body's import time is not part of its identity)
    later = datetime(2026, 2, 1, tzinfo=UTC)
    assert ingest_file(backend.engine, config, path, later)["imported"] == 0
    assert len(events(backend.engine)) == 3


def test_identical_lines_in_one_file_are_both_imported_once(sqlite_backend, now, tmp_path):
    line = "2025-12-19 12:00:00,000 INFO Received Azam Pay callback: {'transactionstatus': 'success', 'utilityref': 'RHCI-DN-1-x', 'amount': '1'}\n"
    path = tmp_path / "twice.log"
    path.write_text(line * 2, encoding="utf-8")
    config = sqlite_backend.config()
    assert ingest_file(sqlite_backend.engine, config, path, now)["imported"] == 2
    assert ingest_file(sqlite_backend.engine, config, path, now)["imported"] == 0
    path.write_text(line * 3, encoding="utf-8")  # the log grew: only the new line is new
    assert ingest_file(sqlite_backend.engine, config, path, now) == {
        "read": 3,
        "imported": 1,
        "duplicates": 2,
        "skipped": 0,
        "errors": 0,
    }


def test_overlong_lines_are_skipped_and_the_rest_still_imports(sqlite_backend, now, tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "MAX_LINE_BYTES", 4096)
    padding = "x" * 10_000
    good = "2025-12-19 12:00:00,000 INFO Received Azam Pay callback: {'transactionstatus': 'success', 'utilityref': 'RHCI-DN-1-x'}\n"
    long = (
        "2025-12-19 12:00:01,000 INFO Received Azam Pay callback: {'transactionstatus': 'success', 'message': '"
        + padding
        + "'}\n"
    )
    path = tmp_path / "long.log"
    path.write_text(long + good + long, encoding="utf-8")
    assert ingest_file(sqlite_backend.engine, sqlite_backend.config(), path, now) == {
        "read": 3,
        "imported": 1,
        "duplicates": 0,
        "skipped": 2,
        "errors": 0,
    }


def test_batches_span_many_lines_with_progress(sqlite_backend, now, tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "BATCH_LINES", 10)
    path = tmp_path / "many.jsonl"
    with path.open("w") as handle:
        for number in range(35):
            handle.write(
                json.dumps(
                    {
                        "received_at": f"2025-12-19T12:00:{number:02d}Z",
                        "body": {"transactionstatus": "success", "utilityref": f"R-{number}"},
                    }
                )
                + "\n"
            )
    calls = []
    counts = ingest_file(
        sqlite_backend.engine,
        sqlite_backend.config(),
        path,
        now,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert counts["imported"] == 35 and len(events(sqlite_backend.engine)) == 35
    size = path.stat().st_size
    assert len(calls) == 4 and calls[-1] == (size, size) and all(done < size for done, _ in calls[:-1])


def test_cli_ingest_naive_offset_moves_received_at(backend):
    config = _cli_config(backend)
    result = CliRunner().invoke(
        cli,
        ["events", "ingest", str(LEGACY_LOG), "--no-progress", "--naive-offset", "+03:00", "--config", str(config)],
        env={"DATABASE_URL": None},
    )
    assert result.exit_code == 1, result.output  # the legacy log holds 3 unreadable callbacks
    utc_first = parse_timestamp(
        next(line for line in LEGACY_LOG.read_text().splitlines() if "Received Azam Pay callback" in line)
    )
    stored = backend.scalar("SELECT MIN(received_at) FROM payment_events WHERE source = 'import'")
    stored = datetime.fromisoformat(str(stored)).replace(tzinfo=UTC)
    assert stored == utc_first - timedelta(hours=3)
    again = CliRunner().invoke(
        cli, ["events", "ingest", str(LEGACY_LOG), "--no-progress", "--config", str(config)], env={"DATABASE_URL": None}
    )
    assert again.exit_code == 1 and "imported=0 duplicates=7" in again.output  # another offset is no second copy
    result = CliRunner().invoke(
        cli,
        ["events", "ingest", str(LEGACY_LOG), "--naive-offset", "EAT", "--config", str(config)],
        env={"DATABASE_URL": None},
    )
    assert result.exit_code == 2 and "error: not a UTC offset like +03:00: 'EAT'" in result.output


def _cli_config(backend, **extra) -> Path:
    settings = {
        "database.url": backend.url,
        "logging.dir": str(backend.tmp_path / "logs"),
        "privacy.key_file": str(backend.tmp_path / "azamrecon.key"),
    }
    settings.update(extra)
    return write_config(backend.tmp_path / "cli.yaml", settings)


def test_cli_ingest_prints_counts_and_never_logs_the_password(backend):
    config = _cli_config(backend, **{"webhook.password": PASSWORD})
    runner = CliRunner()
    result = runner.invoke(
        cli, ["events", "ingest", str(LEGACY_LOG), "--no-progress", "--config", str(config)], env={"DATABASE_URL": None}
    )
    assert result.exit_code == 1, result.output  # 3 unreadable callbacks: the counts line, then one error line
    assert result.stdout.strip().splitlines()[-1] == "read=20 imported=7 duplicates=0 skipped=10 errors=3"
    assert result.stderr.strip().splitlines()[-1].startswith("error: 3 line(s) of ")
    result = runner.invoke(
        cli, ["events", "ingest", str(LEGACY_LOG), "--config", str(config)], env={"DATABASE_URL": None}
    )
    assert result.exit_code == 1 and "imported=0 duplicates=7" in result.output
    assert backend.scalar("SELECT COUNT(*) FROM job_runs WHERE job = 'ingest' AND outcome = 'ok'") == 2
    logs = list((backend.tmp_path / "logs").glob("*.log"))
    assert logs and any("line 9" in p.read_text(encoding="utf-8") for p in logs)  # errors are logged, by line number
    for path in logs:
        text = path.read_text(encoding="utf-8")
        assert PASSWORD not in text and WRONG_PASSWORD not in text
        assert "MPE8H2K9Q1" not in text  # nothing of any body is logged


def test_ingest_logs_no_body_even_without_secret_scrubbing(sqlite_backend, now, tmp_path):
    from pipeline.logs import configure_logging

    config = sqlite_backend.config(**{"logging.dir": str(tmp_path / "raw")})
    configure_logging(config.logging, component="ingest", secrets=(), stderr_level=None)
    try:
        ingest_file(sqlite_backend.engine, config, LEGACY_LOG, now)
    finally:
        logger.remove()
    text = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "raw").glob("*.log"))
    assert "Import of payments.log: 20 lines, 7 callbacks imported" in text
    for secret in (PASSWORD, WRONG_PASSWORD, "MPE8H2K9Q1", "legacy-hook"):
        assert secret not in text


@pytest.mark.parametrize("target", ["missing.log", "."])
def test_cli_ingest_unreadable_file_is_one_line_and_non_zero(sqlite_backend, target):
    config = _cli_config(sqlite_backend)
    path = sqlite_backend.tmp_path / target
    result = CliRunner().invoke(
        cli, ["events", "ingest", str(path), "--config", str(config)], env={"DATABASE_URL": None}
    )
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and result.output.startswith("error: cannot read")
    assert sqlite_backend.scalar("SELECT COUNT(*) FROM payment_events") == 0
