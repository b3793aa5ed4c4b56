"""The fold's commands through the real CLI (jobs.cli.cli): fold, rebuild [--check | --as-of],
donations show|resolve, patients show; exit codes and one-line errors."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import subprocess
import sys
import threading
from decimal import Decimal

import pytest
import yaml
from click.testing import CliRunner
from loguru import logger
from sqlalchemy import func, select, update

from jobs.cli import cli
from jobs.fold import run_fold
from jobs.rebuild import as_of
from pipeline.db import transaction
from pipeline.models import Donation, JobRun, PaymentEvent
from pipeline.snapshot import differences
from tests.builders import add_donation, add_patient, at, callback_body
from tests.fold_helpers import donation_row, populate, snapshot, success
from tests.servers import REPO


@pytest.fixture(autouse=True)
def reset_logging():
    """The CLI configures loguru's global sinks (one on the runner's stderr); undo that after each test."""
    yield
    logger.remove()
    logger.configure(patcher=None, extra={})


@pytest.fixture
def cli_config(backend, tmp_path):
    path = tmp_path / "cli-config.yaml"
    path.write_text(yaml.safe_dump({"database": {"url": backend.url}, "logging": {"dir": str(tmp_path / "cli-logs")}}))
    return str(path)


def invoke(config_path: str, *args: str):
    result = CliRunner().invoke(cli, [*args, "--config", config_path])
    assert "Traceback" not in result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def count(backend, model) -> int:
    with transaction(backend.engine) as session:
        return session.scalar(select(func.count()).select_from(model))


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_fold_prints_counts(backend, now, cli_config):
    ids = populate(backend, now)
    result = invoke(cli_config, "fold", "--format", "json")
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)
    assert counts["events"] == 12
    assert counts["credits_added"] == 5
    assert counts["anomalies"] == 6
    assert counts["position"] == ids["events"][-1]
    assert (counts["gaps_waiting"], counts["lag_events"]) == (0, 0)
    with transaction(backend.engine) as session:
        run = session.scalars(select(JobRun).where(JobRun.job == "fold")).one()
        assert run.outcome == "ok" and json.loads(run.counts)["events"] == 12
    table = invoke(cli_config, "fold")
    assert table.exit_code == 0
    assert "events" in table.stdout and "credits_added" in table.stdout


def test_rebuild_check_exit_codes(backend, now, cli_config):
    ids = populate(backend, now)
    assert invoke(cli_config, "fold").exit_code == 0
    clean = invoke(cli_config, "rebuild", "--check", "--no-progress")
    assert clean.exit_code == 0, clean.output
    assert "rebuild --check: 0 difference(s) over 12 events" in clean.stdout

    with transaction(backend.engine) as session:
        session.execute(update(Donation).where(Donation.id == ids["failed"]).values(status="COMPLETED"))
    dirty = invoke(cli_config, "rebuild", "--check", "--no-progress")
    assert dirty.exit_code == 1
    assert f"donation {ids['failed']} status: live 'COMPLETED' rebuild 'FAILED'" in dirty.stdout
    # a COMPLETED donation without its credit also breaks an invariant of the live state, named as such
    assert f"invariant violation: live donation {ids['failed']}: status COMPLETED, credit None" in dirty.stdout
    as_json = invoke(cli_config, "rebuild", "--check", "--no-progress", "--format", "json")
    assert as_json.exit_code == 1
    checked = json.loads(as_json.stdout)
    assert checked["differences"] == [f"donation {ids['failed']} status: live 'COMPLETED' rebuild 'FAILED'"]
    assert [line.split(",")[0] for line in checked["violations"]] == [
        f"live donation {ids['failed']}: status COMPLETED"
    ]

    repaired = invoke(cli_config, "rebuild", "--no-progress", "--format", "json")
    assert repaired.exit_code == 0
    assert json.loads(repaired.stdout)["events"] == 12
    assert donation_row(backend, ids["failed"])["status"] == "FAILED"
    assert invoke(cli_config, "rebuild", "--check", "--no-progress").exit_code == 0


@pytest.mark.parametrize(
    "args",
    [
        ("--as-of", "last tuesday"),
        ("--as-of", "2026-13-45"),
        ("--as-of", "2026-01-14T09:30:00", "--check"),
        ("--output", "{out}"),
    ],
)
def test_rebuild_bad_input_is_one_line_exit_2_and_writes_nothing(backend, now, cli_config, tmp_path, args):
    populate(backend, now)
    run_fold(backend.engine, backend.config(), at(now, 30))
    before, runs = snapshot(backend), count(backend, JobRun)
    out = tmp_path / "as-of.json"
    result = invoke(
        cli_config,
        "rebuild",
        "--no-progress",
        *(arg.format(out=out) for arg in args),
        *(() if "--output" in args else ("--output", str(out))),
    )
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "--as-of" in line or "--output" in line
    assert result.stdout == ""
    assert not out.exists()
    assert count(backend, JobRun) == runs
    assert differences(before, snapshot(backend)) == []
    assert not (tmp_path / "cli-logs").exists()


def test_rebuild_as_of_writes_the_state_known_then(backend, now, cli_config, tmp_path):
    patient = add_patient(backend.engine, now, required="10000")
    donation, reference = add_donation(backend.engine, now, patient_id=patient, amount="10000")
    success(backend.engine, reference, at(now, 10), amount="10000")
    run_fold(backend.engine, backend.config(), at(now, 20))
    out = tmp_path / "state.json"
    result = invoke(cli_config, "rebuild", "--no-progress", "--as-of", "2026-01-14T09:30:05Z", "--output", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(as_of(backend.engine, backend.config(), at(now, 5)).as_dict()))
    assert data["donations"][str(donation)]["status"] == "PENDING"
    assert data["patients"][str(patient)]["status"] == "FUNDING"
    later = invoke(cli_config, "rebuild", "--no-progress", "--as-of", "2026-01-14T09:30:10+00:00", "--format", "json")
    assert json.loads(later.stdout)["donations"][str(donation)]["status"] == "COMPLETED"
    as_csv = invoke(cli_config, "rebuild", "--no-progress", "--as-of", "2026-01-14T09:30:10+00:00", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))  # one document: one header, donations and patients
    assert [(row["kind"], row["id"], row["status"]) for row in rows] == [
        ("donation", str(donation), "COMPLETED"),
        ("patient", str(patient), "FULLY_FUNDED"),
    ]
    assert (
        Decimal(rows[1]["funding_received"]) == Decimal("10000")
        and rows[1]["fully_funded_at"]
        and not rows[1]["credit_event_id"]
    )


def test_resolve_moves_review_to_completed_and_show_prints_json(backend, now, cli_config):
    patient = add_patient(backend.engine, now, required="40000")
    donation, reference = add_donation(backend.engine, now, patient_id=patient, amount="25000", patient_amount="22500")
    success(backend.engine, reference, at(now, 1), amount="2500")
    assert invoke(cli_config, "fold").exit_code == 0
    shown = invoke(cli_config, "donations", "show", str(donation), "--format", "json")
    assert json.loads(shown.stdout)["status"] == "REVIEW"
    events = count(backend, PaymentEvent)

    result = invoke(
        cli_config,
        "donations",
        "resolve",
        str(donation),
        "--status",
        "COMPLETED",
        "--note",
        "donor paid 25000 by phone; receipt 17",
        "--actor",
        "ops",
    )
    assert result.exit_code == 0, result.output
    assert f"donation {donation} -> COMPLETED" in result.stdout
    assert f"donation {donation} is now COMPLETED" in result.stdout
    assert count(backend, PaymentEvent) == events + 1
    with transaction(backend.engine) as session:
        event = session.scalars(select(PaymentEvent).order_by(PaymentEvent.id.desc())).first()
        assert (event.source, event.status, event.donation_id) == ("operator", "COMPLETED", donation)
        assert json.loads(event.body)["note"] == "donor paid 25000 by phone; receipt 17"

    data = json.loads(invoke(cli_config, "donations", "show", str(donation), "--format", "json").stdout)
    assert data["status"] == "COMPLETED"
    assert Decimal(data["credit"]["amount"]) == Decimal("22500")
    assert data["credit"]["event_id"] == event.id
    assert [a["kind"] for a in data["anomalies"]] == ["amount_mismatch"]
    patient_data = json.loads(invoke(cli_config, "patients", "show", str(patient), "--format", "json").stdout)
    assert patient_data["status"] == "FUNDING"
    assert Decimal(patient_data["funding_received"]) == Decimal("22500")
    assert Decimal(patient_data["funding_required"]) == Decimal("40000")
    assert patient_data["credits"] == 1


def test_patients_show_fully_funded(backend, now, cli_config):
    patient = add_patient(backend.engine, now, required="1000")
    _, reference = add_donation(backend.engine, now, patient_id=patient, amount="1000")
    success(backend.engine, reference, at(now, 7), amount="1000")
    invoke(cli_config, "fold")
    data = json.loads(invoke(cli_config, "patients", "show", str(patient), "--format", "json").stdout)
    assert data["status"] == "FULLY_FUNDED"
    assert Decimal(data["funding_received"]) == Decimal("1000")
    assert data["fully_funded_at"].startswith("2026-01-14T09:30:07")


@pytest.mark.parametrize(
    "args, code",
    [
        (("donations", "show", "999"), 3),
        (("donations", "resolve", "999", "--status", "COMPLETED", "--note", "no such donation"), 3),
        (("patients", "show", "999"), 3),
        (("donations", "resolve", "{donation}", "--status", "COMPLETED", "--note", "   "), 2),
    ],
)
def test_bad_input_is_one_line_with_an_exit_code_and_appends_nothing(backend, now, cli_config, args, code):
    donation, _ = add_donation(backend.engine, now, amount="1000")
    events = count(backend, PaymentEvent)
    result = invoke(cli_config, *(arg.format(donation=donation) for arg in args))
    assert result.exit_code == code, result.output
    line = one_error_line(result)
    if code == 3:
        assert "999 not found" in line
    assert count(backend, PaymentEvent) == events


def test_resolve_rejects_a_status_it_cannot_decide(backend, now, cli_config):
    donation, _ = add_donation(backend.engine, now, amount="1000")
    result = invoke(cli_config, "donations", "resolve", str(donation), "--status", "PENDING", "--note", "x")
    assert result.exit_code == 2
    assert count(backend, PaymentEvent) == 0


# --- machine-readable output with the progress bar on (its default) ------------------------------------------


def csv_header(text: str) -> list[str]:
    return next(csv.reader(io.StringIO(text)))


def test_json_and_csv_output_parse_with_the_progress_bar_on(backend, now, cli_config, tmp_path):
    """stdout carries the result alone: the bar's last frame used to be stdout's first line, so
    `--format json` did not parse and `--format csv` did not start with its header."""
    populate(backend, now)
    assert invoke(cli_config, "fold").exit_code == 0
    for args, header in [
        (
            ("rebuild", "--as-of", "2030-01-01"),
            ["kind", "id", "status", "completed_at", "credit_event_id", "funding_received", "fully_funded_at"],
        ),
        (("rebuild", "--check"), ["difference"]),
        (("rebuild",), None),  # the report's keys, as in the JSON
    ]:
        as_json = invoke(cli_config, *args, "--format", "json")
        assert as_json.exit_code == 0, as_json.output
        data = json.loads(as_json.stdout)
        as_csv = invoke(cli_config, *args, "--format", "csv")
        assert as_csv.exit_code == 0, as_csv.output
        assert csv_header(as_csv.stdout) == (header or list(data)), (args, as_csv.stdout)

    source = tmp_path / "callbacks.jsonl"
    source.write_text(
        json.dumps(
            {"received_at": "2026-01-14T09:40:00Z", "body": json.loads(callback_body("RHCI-DN-998-20260114094000"))}
        )
        + "\n"
    )
    counts = json.loads(invoke(cli_config, "events", "ingest", str(source), "--format", "json").stdout)
    assert (counts["read"], counts["imported"]) == (1, 1)
    again = invoke(cli_config, "events", "ingest", str(source), "--format", "csv")
    assert again.stdout.splitlines() == [",".join(counts), "1,0,1,0,0"]


def test_progress_bar_is_drawn_on_a_terminal_stderr_not_on_stdout(backend, now, cli_config):
    """A real process with stderr on a pseudo-terminal and stdout on a pipe (`... --format json > file`)."""
    populate(backend, now)
    assert invoke(cli_config, "fold").exit_code == 0
    controller, terminal = pty.openpty()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("AZAMRECON_CONFIG", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
    }
    command = [sys.executable, "-m", "jobs.cli", "rebuild", "--check", "--format", "json", "--config", cli_config]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env | {"TERM": "xterm"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
    )
    os.close(terminal)
    drawn = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the process closed its end
                return
            if not chunk:
                return
            drawn.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        stdout, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(10)
        os.close(controller)
    assert process.returncode == 0, drawn.decode(errors="replace")
    result = json.loads(stdout)
    assert result["differences"] == []
    assert b"check" in drawn and f"{result['position']}/{result['position']}".encode() in drawn


def test_resolve_prints_json(backend, now, cli_config):
    donation, reference = add_donation(backend.engine, now, amount="1000")
    success(backend.engine, reference, at(now, 1), amount="900")
    assert invoke(cli_config, "fold").exit_code == 0
    result = invoke(
        cli_config,
        "donations",
        "resolve",
        str(donation),
        "--status",
        "completed",
        "--note",
        "paid by phone",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["donation_id"], data["decision"], data["status"]) == (donation, "COMPLETED", "COMPLETED")
    assert data["event_id"] == backend.scalar("SELECT MAX(id) FROM payment_events")


def test_a_failing_fold_is_one_line_exit_non_zero_and_no_callback_error_line(backend, now, cli_config, tmp_path):
    """jobs/fold.py raises and the entry point tells it: the CLI's one line (it used to add an ERROR line
    "Error processing Azam Pay callback: fold failed", which is for callbacks the receiver could not store)."""
    patient = add_patient(backend.engine, now)
    _, reference = add_donation(backend.engine, now, patient)
    success(backend.engine, reference, at(now, 1))
    with transaction(backend.engine) as session:  # a derived total that no longer matches its credits
        session.execute(update(Donation).values(status="COMPLETED"))
    result = invoke(cli_config, "fold")
    assert result.exit_code == 5
    assert "fold invariant violated" in one_error_line(result)
    for path in (tmp_path / "cli-logs").glob("*.log"):
        assert "Error processing Azam Pay callback" not in path.read_text(), path.name


def test_fold_with_the_database_down_is_one_line(tmp_path):
    """A MySQL URL at a closed loopback port: refused at once."""
    from sandbox.testing import free_port

    path = tmp_path / "down.yaml"
    url = f"mysql+pymysql://root@127.0.0.1:{free_port()}/azamrecon"
    path.write_text(yaml.safe_dump({"database": {"url": url}, "logging": {"dir": str(tmp_path / "logs")}}))
    result = invoke(str(path), "fold")
    assert result.exit_code == 4
    assert "database unreachable" in one_error_line(result)
