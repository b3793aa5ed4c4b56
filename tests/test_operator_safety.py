"""No money moved by accident, and every decision names who made it: `donations resolve` asks before it
reverses a credit or replaces a final status (--yes for scripts), records the OS user and SUDO_USER
beside --actor, `donations show` lists the decisions, and `report` / `events ingest` exit non-zero
when they found something wrong. Through the real CLI, on SQLite and MariaDB."""

from __future__ import annotations

import csv
import io
import json
import os
import pwd
from decimal import Decimal

import pytest
from click.testing import CliRunner
from loguru import logger
from sqlalchemy import func, select

from jobs import operator
from jobs.cli import cli
from jobs.commands import donations as donations_command
from jobs.fold import run_fold
from jobs.operator import BODY_KEYS, needs_confirmation
from pipeline.db import transaction
from pipeline.models import Donation, FundingCredit, Patient
from tests.builders import add_donation, add_patient, append, at, callback_body
from tests.servers import config_settings, write_config

ME = pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture(autouse=True)
def reset_logging():
    """The CLI configures loguru's global sinks (one on the runner's stderr); undo that after each test."""
    yield
    logger.remove()
    logger.configure(patcher=None, extra={})


@pytest.fixture(autouse=True)
def no_sudo(monkeypatch):
    """The suite may itself run under sudo; each test says what SUDO_USER is."""
    monkeypatch.delenv("SUDO_USER", raising=False)


@pytest.fixture
def run(backend):
    config = str(write_config(backend.tmp_path / "cli.yaml", config_settings(backend)))

    def invoke(*args: str, input: str | None = None):
        result = CliRunner().invoke(
            cli, [*args, "--config", config], input=input, env={"DATABASE_URL": None, "AZAMRECON_CONFIG": None}
        )
        assert "Traceback" not in result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return invoke


def success(engine, reference: str, when, amount: str) -> int:
    """AzamPay's success callback for the donation, as the receiver appends it."""
    return append(engine, callback_body(reference, amount=amount, transaction_id=f"tx-{reference}"), when)


def completed(backend, now, amount="50000") -> tuple[int, int]:
    """(patient id, donation id) of a donation folded to COMPLETED with its credit."""
    patient = add_patient(backend.engine, now, required="100000")
    donation, reference = add_donation(backend.engine, now, patient_id=patient, amount=amount)
    success(backend.engine, reference, at(now, 1), amount=amount)
    run_fold(backend.engine, backend.config(), at(now, 2))
    assert state(backend, patient, donation) == ("COMPLETED", Decimal(amount), 1)
    return patient, donation


def in_review(backend, now) -> int:
    """A donation the fold put in REVIEW (paid 2500 of 25000)."""
    donation, reference = add_donation(backend.engine, now, amount="25000")
    success(backend.engine, reference, at(now, 1), amount="2500")
    run_fold(backend.engine, backend.config(), at(now, 2))
    assert backend.scalar("SELECT status FROM donations WHERE id = :d", d=donation) == "REVIEW"
    return donation


def state(backend, patient: int, donation: int) -> tuple[str, Decimal, int]:
    """(donation status, patient's funding_received, credits on the donation), through the models'
    column types (money is integer cents on SQLite; raw SQL would show them)."""
    with transaction(backend.engine) as session:
        return (
            session.get(Donation, donation).status,
            session.get(Patient, patient).funding_received,
            session.scalar(
                select(func.count()).select_from(FundingCredit).where(FundingCredit.donation_id == donation)
            ),
        )


def operator_bodies(backend, donation: int) -> list[dict]:
    rows = backend.rows(
        "SELECT body FROM payment_events WHERE source = 'operator' AND donation_id = :d ORDER BY id", d=donation
    )
    return [json.loads(bytes(row[0])) for row in rows]


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


# --- the rule, once -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "current, decision, asks",
    [
        ("COMPLETED", "FAILED", True),
        ("COMPLETED", "CANCELLED", True),
        ("COMPLETED", "COMPLETED", False),
        ("FAILED", "COMPLETED", True),
        ("FAILED", "CANCELLED", True),
        ("FAILED", "FAILED", False),
        ("CANCELLED", "COMPLETED", True),
        ("EXPIRED", "COMPLETED", True),
        ("EXPIRED", "FAILED", True),
        ("PENDING", "COMPLETED", False),
        ("PENDING", "FAILED", False),
        ("REVIEW", "COMPLETED", False),
        ("REVIEW", "FAILED", False),
    ],
)
def test_needs_confirmation_names_a_reason_only_for_a_reversal_or_a_final_status_replaced(current, decision, asks):
    reason = needs_confirmation(current, decision.lower())
    assert (reason is not None) == asks, reason
    if current == "COMPLETED" and asks:
        assert "reverses its credit" in reason


# --- resolve: confirmation ----------------------------------------------------------------------------------


def test_reversing_a_credit_without_yes_refuses_and_appends_nothing(backend, now, run):
    """The reported bug: `resolve 1 --status failed` on a COMPLETED donation silently reversed 50,000."""
    patient, donation = completed(backend, now)
    events = backend.scalar("SELECT COUNT(*) FROM payment_events")
    result = run("donations", "resolve", str(donation), "--status", "failed", "--note", "donor says it failed")
    assert result.exit_code == 2, result.output
    assert (
        len(error_lines(result)) == 1
        and "--yes" in error_lines(result)[0]
        and "reverses its credit" in error_lines(result)[0]
    )
    assert result.stdout == ""
    assert backend.scalar("SELECT COUNT(*) FROM payment_events") == events
    assert state(backend, patient, donation) == ("COMPLETED", Decimal("50000.00"), 1)


def test_reversing_a_credit_with_yes_reverses_it(backend, now, run):
    patient, donation = completed(backend, now)
    result = run("donations", "resolve", str(donation), "--status", "FAILED", "--note", "chargeback 77", "--yes")
    assert result.exit_code == 0, result.output
    assert f"donation {donation} is now FAILED" in result.stdout
    assert state(backend, patient, donation) == ("FAILED", Decimal("0.00"), 0)


@pytest.mark.parametrize("answer, code", [("n\n", 1), ("\n", 1), ("y\n", 0)])
def test_on_a_terminal_the_prompt_asks_and_only_yes_appends(backend, now, run, monkeypatch, answer, code):
    patient, donation = completed(backend, now)
    monkeypatch.setattr(donations_command, "stdin_is_terminal", lambda: True)
    result = run(
        "donations",
        "resolve",
        str(donation),
        "--status",
        "CANCELLED",
        "--note",
        "donor cancelled",
        "--format",
        "json",
        input=answer,
    )
    assert result.exit_code == code, result.output
    assert "reverses its credit" in result.stderr and "[y/N]" in result.stderr  # asked on stderr, default No
    if code:
        assert len(error_lines(result)) == 1 and "not confirmed" in error_lines(result)[0]
        assert operator_bodies(backend, donation) == []
        assert state(backend, patient, donation) == ("COMPLETED", Decimal("50000.00"), 1)
    else:
        assert json.loads(result.stdout)["status"] == "CANCELLED"  # the question kept out of stdout
        assert state(backend, patient, donation) == ("CANCELLED", Decimal("0.00"), 0)


def test_replacing_another_final_status_needs_yes_too(backend, now, run):
    patient, donation = completed(backend, now)
    assert (
        run("donations", "resolve", str(donation), "--status", "FAILED", "--note", "chargeback", "--yes").exit_code == 0
    )
    result = run("donations", "resolve", str(donation), "--status", "COMPLETED", "--note", "chargeback withdrawn")
    assert result.exit_code == 2 and "--yes" in error_lines(result)[0]
    assert len(operator_bodies(backend, donation)) == 1
    assert state(backend, patient, donation) == ("FAILED", Decimal("0.00"), 0)


def test_a_decision_on_review_or_pending_needs_no_yes_and_no_prompt(backend, now, run, monkeypatch):
    """No prompt even on a terminal: with no input to answer one, a prompt would abort."""
    monkeypatch.setattr(donations_command, "stdin_is_terminal", lambda: True)
    review = in_review(backend, now)
    result = run(
        "donations", "resolve", str(review), "--status", "COMPLETED", "--note", "paid 25000 by phone", input=""
    )
    assert result.exit_code == 0, result.output
    assert "[y/N]" not in result.stderr and f"donation {review} is now COMPLETED" in result.stdout
    pending, _ = add_donation(backend.engine, now, amount="1000")
    result = run("donations", "resolve", str(pending), "--status", "FAILED", "--note", "donor gave up", input="")
    assert result.exit_code == 0, result.output
    assert f"donation {pending} is now FAILED" in result.stdout


def test_a_confirmation_holds_only_for_the_status_it_was_given_for(backend, now):
    """The status can move between the question and the append (the scheduler folds meanwhile)."""
    from pipeline.errors import AzamreconError

    review = in_review(backend, now)
    with pytest.raises(AzamreconError, match="changed from PENDING to REVIEW"):
        operator.resolve_donation(backend.engine, review, "FAILED", "stale view", at(now, 3), expected_status="PENDING")
    assert operator_bodies(backend, review) == []


# --- identity -----------------------------------------------------------------------------------------------


def test_the_body_records_os_user_and_sudo_user_and_actor_only_beside_them(backend, now, run, monkeypatch):
    donation = in_review(backend, now)
    monkeypatch.setenv("SUDO_USER", "amina")
    monkeypatch.setenv("USER", "someone-else")  # the environment's claim is not the identity
    monkeypatch.setenv("LOGNAME", "someone-else")
    result = run(
        "donations",
        "resolve",
        str(donation),
        "--status",
        "COMPLETED",
        "--note",
        "receipt 17",
        "--actor",
        "Baraka (finance)",
    )
    assert result.exit_code == 0, result.output
    monkeypatch.delenv("SUDO_USER")
    result = run("donations", "resolve", str(donation), "--status", "COMPLETED", "--note", "receipt 17 re-checked")
    assert result.exit_code == 0, result.output
    first, second = operator_bodies(backend, donation)
    assert list(first) == list(BODY_KEYS) and list(second) == list(BODY_KEYS)
    assert (first["os_user"], first["sudo_user"], first["actor"]) == (ME, "amina", "Baraka (finance)")
    assert (second["os_user"], second["sudo_user"], second["actor"]) == (ME, None, None)
    assert (first["donation_id"], first["status"], first["note"]) == (donation, "COMPLETED", "receipt 17")


def test_an_empty_actor_is_refused(backend, now, run):
    donation = in_review(backend, now)
    result = run("donations", "resolve", str(donation), "--status", "COMPLETED", "--note", "x", "--actor", "  ")
    assert result.exit_code == 2 and "--actor" in error_lines(result)[0]
    assert operator_bodies(backend, donation) == []


def test_without_a_passwd_entry_the_os_user_is_the_uid(monkeypatch):
    def no_entry(uid):
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    assert operator.os_user() == f"uid:{os.getuid()}"


def test_donations_show_lists_the_decisions_in_every_format(backend, now, run, monkeypatch):
    patient, donation = completed(backend, now)
    monkeypatch.setenv("SUDO_USER", "amina")
    assert (
        run(
            "donations",
            "resolve",
            str(donation),
            "--status",
            "FAILED",
            "--note",
            "chargeback 77",
            "--actor",
            "Baraka",
            "--yes",
        ).exit_code
        == 0
    )
    [event_id] = [row[0] for row in backend.rows("SELECT id FROM payment_events WHERE source = 'operator'")]

    data = json.loads(run("donations", "show", str(donation), "--format", "json").stdout)
    [decision] = data["decisions"]
    assert decision["received_at"]
    assert {k: decision[k] for k in ("event_id", "status", "note", "os_user", "sudo_user", "actor")} == {
        "event_id": event_id,
        "status": "FAILED",
        "note": "chargeback 77",
        "os_user": ME,
        "sudo_user": "amina",
        "actor": "Baraka",
    }

    [row] = list(csv.DictReader(io.StringIO(run("donations", "show", str(donation), "--format", "csv").stdout)))
    assert json.loads(row["decisions"]) == data["decisions"]  # the cell is the same JSON, not a Python repr

    table = run("donations", "show", str(donation)).stdout
    for text in ("decisions", "chargeback 77", "amina", "Baraka", "os_user", "sudo_user", "actor"):
        assert text in table, text


# --- exit codes -------------------------------------------------------------------------------------------------


def test_report_exits_1_on_a_broken_invariant_and_still_prints_the_report(backend, now, run):
    patient, _ = completed(backend, now)
    assert run("report", "--format", "json").exit_code == 0
    with backend.engine.begin() as connection:  # a derived column written behind the fold's back
        from sqlalchemy import text

        connection.execute(text("UPDATE patients SET funding_received = 1 WHERE id = :p"), {"p": patient})
    result = run("report", "--format", "json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["invariants"]["ok"] is False  # stdout is still the whole report
    [line] = error_lines(result)
    assert "invariant violation" in line and f"patient {patient}" in line
    table = run("report")
    assert table.exit_code == 1 and "invariant violations" in table.stdout


def test_events_ingest_exits_1_when_a_line_fails_and_still_prints_its_counts(backend, now, run, tmp_path):
    good = {"received_at": "2026-01-14T09:40:00Z", "body": json.loads(callback_body("RHCI-DN-998-20260114094000"))}
    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps(good) + "\n")
    assert run("events", "ingest", str(clean), "--no-progress").exit_code == 0
    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        '{"transactionstatus": "success", "utilityref": "RHCI-DN-999-2026\n'
        + json.dumps(good | {"received_at": "2026-01-14T09:41:00Z"})
        + "\n"
    )
    result = run("events", "ingest", str(broken), "--no-progress")
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == ["read=2 imported=1 duplicates=0 skipped=0 errors=1"]
    [line] = error_lines(result)
    assert "1 line(s)" in line and "broken.jsonl" in line
    assert backend.scalar("SELECT COUNT(*) FROM payment_events WHERE source = 'import'") == 2
