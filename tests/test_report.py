"""The report (jobs.report, `azamrecon report`): the webhook guide's monitoring questions on known data."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner
from loguru import logger
from sqlalchemy import select, update

from jobs.cli import cli
from jobs.fold import run_fold
from jobs.report import build_report, write_daily_report
from pipeline.db import transaction
from pipeline.invariants import violations as snapshot_violations
from pipeline.models import Donation, Patient
from pipeline.store.donations import create_donation, create_patient
from tests.builders import append, callback_body
from tests.servers import write_config

DAY = date(2026, 1, 14)
SECTIONS = (
    "completed",
    "failed",
    "cancelled",
    "stuck_pending",
    "status_counts",
    "patients",
    "general_fund_received",
    "anomalies",
    "invariants",
)


@dataclass
class Scenario:
    a: int
    b: int
    d: dict[str, int]
    refs: dict[str, str]
    duplicate_event: int
    unknown_event: int
    mismatch_event: int


def donation(engine, created_at, patient_id, amount, currency="TZS", charge=None) -> tuple[int, str]:
    with transaction(engine) as session:
        made = create_donation(
            session,
            patient_id=patient_id,
            amount=Decimal(amount),
            currency=currency,
            charge_amount=Decimal(charge or amount),
            charge_currency="TZS",
            msisdn="0758285812",
            provider="Mpesa",
            reference_prefix="RHCI-DN",
            now=created_at,
        )
        return made.id, made.external_reference


def scenario(engine, now) -> Scenario:
    """Known data around now = 2026-01-14 09:30 UTC (see the conftest `now` fixture)."""
    hours = lambda h: now - timedelta(hours=h)  # noqa: E731
    minutes = lambda m: now - timedelta(minutes=m)  # noqa: E731
    yesterday = datetime(2026, 1, 13, 19, 0, tzinfo=UTC)
    with transaction(engine) as session:
        a = create_patient(session, name="Amina", funding_required=Decimal("100000"), now=yesterday).id
        b = create_patient(session, name="Baraka", funding_required=Decimal("50000"), now=yesterday).id
    spec = {
        "d1": (hours(3), a, "25000", "TZS", None),
        "d2": (hours(3), a, "30000", "TZS", None),
        "d3": (yesterday, None, "10000", "TZS", None),
        "d4": (hours(3), b, "5000", "TZS", None),
        "d5": (hours(3), b, "7000", "TZS", None),
        "d6": (minutes(30), a, "1000", "TZS", None),
        "d7": (minutes(5), a, "2000", "TZS", None),
        "d8": (hours(3), a, "9000", "TZS", None),
        "d9": (hours(3), None, "20", "USD", "50000"),
        "d10": (hours(3), b, "50000", "TZS", None),
        "d11": (yesterday, b, "3000", "TZS", None),
    }
    d, refs = {}, {}
    for name, (created, patient, amount, currency, charge) in spec.items():
        d[name], refs[name] = donation(engine, created, patient, amount, currency, charge)

    def cb(name, at, status="success", amount=None):
        charge = spec[name][4] or spec[name][2]
        return append(
            engine, callback_body(refs[name], status=status, amount=amount or charge, transaction_id=f"tx-{name}"), at
        )

    cb("d1", hours(2))
    cb("d2", hours(1))
    cb("d3", datetime(2026, 1, 13, 20, 0, tzinfo=UTC))
    cb("d4", minutes(100), status="failure")
    cb("d5", minutes(80), status="cancelled")
    mismatch = cb("d8", minutes(70), amount="8000")
    cb("d9", minutes(50))
    cb("d10", minutes(40))
    cb("d11", datetime(2026, 1, 13, 21, 0, tzinfo=UTC), status="failed")
    unknown = append(engine, callback_body("RHCI-DN-999-20251219120000", transaction_id="tx-unknown"), minutes(30))
    duplicate = cb("d1", minutes(20))
    return Scenario(a, b, d, refs, duplicate, unknown, mismatch)


def test_report_answers_every_question(backend, now):
    s = scenario(backend.engine, now)
    config = backend.config()
    run_fold(backend.engine, config, now)
    report = build_report(backend.engine, config, day=DAY, now=now)

    assert report["day"] == "2026-01-14" and report["basis"] == "live" and report["as_of"] is None
    completed = report["completed"]
    assert completed["count"] == 4
    assert completed["sum"] == {"TZS": Decimal("105000.00"), "USD": Decimal("20.00")}
    assert [row["id"] for row in completed["donations"]] == [s.d["d1"], s.d["d2"], s.d["d9"], s.d["d10"]]
    assert completed["donations"][0]["completed_at"] == now - timedelta(hours=2)

    assert report["failed"]["count"] == 1 and report["failed"]["donations"][0]["id"] == s.d["d4"]
    assert report["failed"]["donations"][0]["failed_at"] == now - timedelta(minutes=100)
    assert report["failed"]["sum"] == {"TZS": Decimal("5000.00")}
    assert report["cancelled"]["count"] == 1 and report["cancelled"]["donations"][0]["id"] == s.d["d5"]

    stuck = report["stuck_pending"]
    assert stuck["threshold_minutes"] == 10 and stuck["count"] == 1
    assert stuck["unpollable"] == 1  # its checkout never stored AzamPay's transaction id
    assert stuck["donations"] == [
        {
            "id": s.d["d6"],
            "external_reference": s.refs["d6"],
            "amount": Decimal("1000.00"),
            "currency": "TZS",
            "created_at": now - timedelta(minutes=30),
            "age_seconds": 1800,
            "age_minutes": 30.0,
            "pollable": False,
        }
    ]
    assert report["status_counts"] == {
        "PENDING": 2,
        "COMPLETED": 5,
        "FAILED": 2,
        "CANCELLED": 1,
        "EXPIRED": 0,
        "REVIEW": 1,
    }

    patients = {p["id"]: p for p in report["patients"]}
    assert (
        patients[s.a]["funding_received"],
        patients[s.a]["funding_required"],
        patients[s.a]["percent"],
        patients[s.a]["status"],
    ) == (Decimal("55000.00"), Decimal("100000.00"), Decimal("55.00"), "FUNDING")
    assert (patients[s.b]["funding_received"], patients[s.b]["percent"], patients[s.b]["status"]) == (
        Decimal("50000.00"),
        Decimal("100.00"),
        "FULLY_FUNDED",
    )
    assert patients[s.b]["fully_funded_at"] == now - timedelta(minutes=40)
    assert report["general_fund_received"] == Decimal("10020.00")

    anomalies = report["anomalies"]
    assert anomalies["total"] == 3
    assert {kind: entry["count"] for kind, entry in anomalies["by_kind"].items()} == {
        "unknown_reference": 1,
        "amount_mismatch": 1,
        "duplicate": 1,
    }
    (dup,) = anomalies["by_kind"]["duplicate"]["latest"]
    assert (dup["event_id"], dup["donation_id"], dup["received_at"]) == (
        s.duplicate_event,
        s.d["d1"],
        now - timedelta(minutes=20),
    )
    (unknown,) = anomalies["by_kind"]["unknown_reference"]["latest"]
    assert (unknown["event_id"], unknown["donation_id"]) == (s.unknown_event, None) and "RHCI-DN-999" in unknown[
        "detail"
    ]
    assert anomalies["by_kind"]["amount_mismatch"]["latest"][0]["event_id"] == s.mismatch_event

    assert report["fold_lag"] == {"events": 0, "seconds": 0.0, "oldest_unfolded_at": None}
    assert report["invariants"] == {"ok": True, "violations": []}

    yesterday = build_report(backend.engine, config, day=date(2026, 1, 13), now=now)
    assert yesterday["completed"]["count"] == 1 and yesterday["completed"]["donations"][0]["id"] == s.d["d3"]
    assert [row["id"] for row in yesterday["failed"]["donations"]] == [s.d["d11"]]


def test_stuck_ages_follow_now_and_the_threshold(backend, now):
    s = scenario(backend.engine, now)
    run_fold(backend.engine, backend.config(), now)
    later = now + timedelta(minutes=15)
    stuck = build_report(backend.engine, backend.config(), day=DAY, now=later)["stuck_pending"]
    assert [(row["id"], row["age_seconds"]) for row in stuck["donations"]] == [
        (s.d["d6"], 45 * 60),
        (s.d["d7"], 20 * 60),
    ]
    stuck = build_report(backend.engine, backend.config(**{"poll.threshold_minutes": 40}), day=DAY, now=now)[
        "stuck_pending"
    ]
    assert stuck["count"] == 0


def test_lag_and_a_tampered_total(backend, now):
    s = scenario(backend.engine, now)
    config = backend.config()
    run_fold(backend.engine, config, now)
    append(
        backend.engine, callback_body(s.refs["d6"], transaction_id="tx-d6", amount="1000"), now - timedelta(seconds=60)
    )
    report = build_report(backend.engine, config, day=DAY, now=now)
    assert report["fold_lag"]["events"] == 1 and report["fold_lag"]["seconds"] == 60.0
    assert report["fold_lag"]["oldest_unfolded_at"] == now - timedelta(seconds=60)

    with transaction(backend.engine) as session:
        session.execute(update(Patient).where(Patient.id == s.a).values(funding_received=Decimal("1")))
    invariants = build_report(backend.engine, config, day=DAY, now=now)["invariants"]
    assert invariants["ok"] is False
    assert any(
        line.startswith(f"patient {s.a}: funding_received 1.00 != sum of credits 55000.00")
        for line in invariants["violations"]
    ), invariants


def test_as_of_answers_from_the_state_known_then(backend, now):
    s = scenario(backend.engine, now)
    config = backend.config()
    run_fold(backend.engine, config, now)
    instant = now - timedelta(
        minutes=65
    )  # 08:25: d1 paid, d4 failed, d5 cancelled, d8 in review; d2/d9/d10 still pending
    report = build_report(backend.engine, config, day=DAY, now=now, as_of=instant)
    assert report["basis"] == "as_of" and report["as_of"] == instant
    assert report["completed"]["count"] == 1 and report["completed"]["sum"] == {"TZS": Decimal("25000.00")}
    assert report["failed"]["count"] == 1 and report["cancelled"]["count"] == 1
    stuck = report["stuck_pending"]
    assert stuck["measured_at"] == instant
    assert [(row["id"], row["age_seconds"]) for row in stuck["donations"]] == [
        (s.d[n], 115 * 60) for n in ("d2", "d9", "d10")
    ]
    patients = {p["id"]: p for p in report["patients"]}
    assert (patients[s.a]["funding_received"], patients[s.a]["percent"]) == (Decimal("25000.00"), Decimal("25.00"))
    assert patients[s.b]["status"] == "FUNDING"
    assert {kind: entry["count"] for kind, entry in report["anomalies"]["by_kind"].items()} == {"amount_mismatch": 1}
    assert report["invariants"]["ok"] is True and report["fold_lag"]["events"] == 0
    assert (
        report["status_counts"]["REVIEW"] == 1 and report["status_counts"]["PENDING"] == 3
    )  # d2, d9, d10; d6, d7 did not exist yet

    # as of now, the in-memory state answers exactly what the live tables answer
    live = build_report(backend.engine, config, day=DAY, now=now)
    at_now = build_report(backend.engine, config, day=DAY, now=now, as_of=now)
    for section in SECTIONS:
        assert at_now[section] == live[section], section


def test_snapshot_invariants_catch_a_wrong_total(backend, now):
    from jobs.rebuild import as_of

    s = scenario(backend.engine, now)
    config = backend.config()
    snapshot = as_of(backend.engine, config, now)
    with transaction(backend.engine) as session:
        amounts = dict(session.execute(select(Donation.id, Donation.patient_amount)).all())
    assert snapshot_violations(snapshot, amounts) == []
    received, status, funded_at = snapshot.patients[s.a]
    snapshot.patients[s.a] = ("1.00", status, funded_at)
    del snapshot.credits[s.d["d10"]]
    problems = snapshot_violations(snapshot, amounts)
    assert any(p.startswith(f"patient {s.a}: funding_received 1.00") for p in problems)
    assert any(p.startswith(f"donation {s.d['d10']}: status COMPLETED, credit None") for p in problems)


def test_write_daily_report_writes_yesterday_and_logs_one_line(sqlite_backend, now, tmp_path):
    from pipeline.logs import configure_logging

    scenario(sqlite_backend.engine, now)
    config = sqlite_backend.config(**{"logging.dir": str(tmp_path / "logs")})
    run_fold(sqlite_backend.engine, config, now)
    configure_logging(config.logging, component="scheduler", stderr_level=None)
    try:
        path = write_daily_report(
            sqlite_backend.engine,
            config,
            datetime(2026, 1, 15, 0, 5, tzinfo=UTC),
            directory=tmp_path / "reports",
        )
    finally:
        logger.remove()
    assert path == tmp_path / "reports" / "report-2026-01-14.json"
    data = json.loads(path.read_text())
    assert (
        data["day"] == "2026-01-14"
        and data["completed"]["count"] == 4
        and data["completed"]["sum"] == {"TZS": "105000.00", "USD": "20.00"}
    )
    assert not list((tmp_path / "reports").glob("*.partial"))
    lines = [line for line in (tmp_path / "logs" / "app.log").read_text().splitlines() if "Report 2026-01-14" in line]
    assert len(lines) == 1 and "4 completed (TZS 105000.00, USD 20.00)" in lines[0] and "invariants OK" in lines[0]
    payments_log = tmp_path / "logs" / "payments.log"
    # the summary must not inflate the guide's greps ("completed successfully", "payment failed")
    assert not payments_log.exists() or "Report 2026-01-14" not in payments_log.read_text()
    assert "completed successfully" not in lines[0] and "payment failed" not in lines[0]


def _config_file(backend):
    return write_config(
        backend.tmp_path / "cli.yaml", {"database.url": backend.url, "logging.dir": str(backend.tmp_path / "logs")}
    )


def _run(backend, *args):
    return CliRunner().invoke(
        cli, ["report", *args, "--config", str(_config_file(backend))], env={"DATABASE_URL": None}
    )


def test_cli_report_json_csv_and_table(backend, now):
    s = scenario(backend.engine, now)
    run_fold(backend.engine, backend.config(), now)

    result = _run(backend, "--date", "2026-01-14", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["completed"]["count"] == 4 and data["completed"]["sum"] == {"TZS": "105000.00", "USD": "20.00"}
    assert data["failed"]["count"] == 1 and data["invariants"]["ok"] is True
    assert {p["id"]: p["percent"] for p in data["patients"]} == {s.a: "55.00", s.b: "100.00"}

    result = _run(backend, "--date", "2026-01-14", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["section", "key", "value"]  # the database line goes to stderr
    assert result.stderr.startswith("database: sqlite:///") or result.stderr.startswith("database: mysql")
    cells = {(section, key): value for section, key, value in rows[1:]}
    assert cells[("completed", "count")] == "4"
    assert cells[("completed", "sum.TZS")] == "105000.00" and cells[("completed", "sum.USD")] == "20.00"
    assert cells[("patients", f"{s.a}.percent")] == "55.00"
    assert cells[("anomalies", "by_kind.duplicate.count")] == "1"
    assert cells[("invariants", "ok")] == "true" and cells[("report", "day")] == "2026-01-14"
    assert cells[("stuck_pending", f"donations.{s.d['d6']}.external_reference")] == s.refs["d6"]

    result = _run(backend, "--date", "2026-01-14")
    assert result.exit_code == 0, result.output
    for text in (
        "report 2026-01-14 (live)",
        "patient funding",
        "Amina",
        "55.00",
        "FULLY_FUNDED",
        "anomalies by kind",
        "amount_mismatch",
        "105000.00",
    ):
        assert text in result.output, text

    result = _run(backend, "--date", "2026-01-14", "--as-of", "2026-01-14T08:25:00Z", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["completed"]["count"] == 1


@pytest.mark.parametrize(
    "args", [["--date", "2026-13-01"], ["--date", "14/01/2026"], ["--date", "yesterday"], ["--as-of", "soon"]]
)
def test_cli_report_bad_dates_are_one_line_exit_2(sqlite_backend, args):
    result = _run(sqlite_backend, *args)
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.strip().count("\n") == 0
