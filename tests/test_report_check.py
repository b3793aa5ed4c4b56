"""`azamrecon report --check`: one line per problem and exit 1, or one "ok" line and exit 0."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from jobs.cli import cli
from jobs.fold import run_fold
from jobs.report import check_facts
from jobs.runs import record_finished_run, utcnow
from pipeline.report_sections import check_problems
from tests.builders import add_donation, add_patient, append, at, callback_body
from tests.servers import config_settings, write_config


def problems(backend, now, **overrides) -> list[str]:
    config = backend.config(**overrides)
    return check_problems(check_facts(backend.engine, config, now), config.alerts, now, config.poll.max_age_hours)


def test_nothing_wrong_is_no_problem_and_an_idle_fold_stays_fresh(backend, now):
    run_fold(backend.engine, backend.config(), now)  # nothing to fold: job_runs gets no row, the checkpoint does
    assert backend.scalar("SELECT COUNT(*) FROM job_runs") == 0
    assert problems(backend, at(now, 299)) == []
    [line] = problems(backend, at(now, 301))
    assert line.startswith("fold stale: last successful fold 301 s ago") and "alerts.fold_stale_seconds 300" in line
    assert problems(backend, at(now, 301), **{"alerts.fold_stale_seconds": 400}) == []


def test_no_fold_ever_is_stale(backend, now):
    [line] = problems(backend, now)
    assert line.startswith("fold stale: no successful fold")


def test_a_recorded_ok_fold_run_counts_and_an_error_run_does_not(backend, now):
    run_fold(backend.engine, backend.config(), now)
    record_finished_run(backend.engine, "fold", at(now, 100), at(now, 200), "error", error="boom")
    assert problems(backend, at(now, 400))[0].startswith("fold stale")
    record_finished_run(backend.engine, "fold", at(now, 200), at(now, 250), "ok")
    assert problems(backend, at(now, 400)) == []


def test_lag_over_the_threshold(backend, now):
    run_fold(backend.engine, backend.config(), now)
    append(backend.engine, callback_body("RHCI-DN-999-20260114093000"), at(now, -5))
    append(backend.engine, callback_body("RHCI-DN-998-20260114093000"), at(now, 10))
    assert problems(backend, at(now, 50)) == []  # oldest unfolded is 55 s old
    [line] = problems(backend, at(now, 70))
    assert line.startswith("fold lag: oldest unfolded event 75 s old, 2 event(s) unfolded")
    run_fold(backend.engine, backend.config(), at(now, 70))
    assert problems(backend, at(now, 71)) == []


def test_spool_not_empty(backend, now):
    run_fold(backend.engine, backend.config(), now)
    spool = backend.tmp_path / "spool"
    spool.mkdir()
    (spool / "callbacks-host-1-abc.jsonl").write_bytes(b"")  # a receiver's file with nothing in it yet
    assert problems(backend, now) == []
    (spool / "callbacks-host-2-def.jsonl.claimed").write_bytes(b'{"line": 1}\n')
    [line] = problems(backend, now)
    assert line.startswith("spool not empty: 1 file(s) in ") and str(spool) in line


def test_invariant_failing(backend, now):
    patient = add_patient(backend.engine, now)
    donation, reference = add_donation(backend.engine, now, patient_id=patient)
    append(backend.engine, callback_body(reference), now)
    run_fold(backend.engine, backend.config(), now)
    assert problems(backend, now) == []
    with backend.engine.begin() as connection:  # a derived column written behind the fold's back
        connection.execute(text("UPDATE patients SET funding_received = 1 WHERE id = :p"), {"p": patient})
    [line] = problems(backend, now)
    assert line.startswith("invariant failing: ") and f"patient {patient}" in line


def test_review_over_the_threshold(backend, now):
    donation, reference = add_donation(backend.engine, now, amount="25000")
    append(backend.engine, callback_body(reference, amount="1"), now)  # amount mismatch: REVIEW
    run_fold(backend.engine, backend.config(), now)
    assert backend.scalar("SELECT status FROM donations WHERE id = :d", d=donation) == "REVIEW"
    [line] = problems(backend, now)
    assert line == "REVIEW: 1 donation(s) in REVIEW (alerts.max_review 0)"
    assert problems(backend, now, **{"alerts.max_review": 1}) == []


def test_stuck_pending_past_max_age(backend, now):
    add_donation(backend.engine, now - timedelta(hours=25))
    add_donation(backend.engine, now - timedelta(hours=2))
    run_fold(backend.engine, backend.config(), now)
    [line] = problems(backend, now)
    assert line.startswith("stuck PENDING: 1 donation(s) PENDING for more than 24 h")
    assert problems(backend, now, **{"alerts.max_stuck_pending": 1}) == []
    assert len(problems(backend, now, **{"poll.max_age_hours": 1})) == 1
    assert problems(backend, now, **{"poll.max_age_hours": 1})[0].startswith("stuck PENDING: 2 donation(s)")


def test_every_problem_at_once_one_line_each(backend, now):
    donation, reference = add_donation(backend.engine, now - timedelta(hours=30), amount="25000")
    add_donation(backend.engine, now - timedelta(hours=30))
    append(backend.engine, callback_body(reference, amount="1"), now - timedelta(hours=29))
    run_fold(backend.engine, backend.config(), now - timedelta(hours=29))
    append(backend.engine, callback_body("RHCI-DN-999-20260114093000"), now - timedelta(hours=1))
    (backend.tmp_path / "spool").mkdir()
    (backend.tmp_path / "spool" / "callbacks-h-1-x.jsonl").write_bytes(b"{}\n")
    patient = add_patient(backend.engine, now)
    with backend.engine.begin() as connection:
        connection.execute(text("UPDATE patients SET funding_received = 5 WHERE id = :p"), {"p": patient})
    found = problems(backend, now)
    kinds = [line.split(":")[0] for line in found]
    assert kinds == ["fold stale", "fold lag", "spool not empty", "invariant failing", "REVIEW", "stuck PENDING"]


# --- the command ------------------------------------------------------------------------------------------


def _run(backend, *args, **settings):
    path = write_config(backend.tmp_path / "cli.yaml", config_settings(backend, **settings))
    return CliRunner().invoke(cli, ["report", *args, "--config", str(path)], env={"DATABASE_URL": None})


def test_cli_check_ok_and_problems(backend):
    run_fold(backend.engine, backend.config(), utcnow())
    result = _run(backend, "--check")
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    assert line.startswith("ok: last fold ")
    assert result.stderr.splitlines() == [f"database: {backend.engine.url.render_as_string(hide_password=True)}"]

    add_donation(backend.engine, utcnow(), amount="25000")
    with backend.engine.begin() as connection:
        connection.execute(text("UPDATE donations SET status = 'REVIEW'"))
    result = _run(backend, "--check", **{"alerts.fold_stale_seconds": 0.001})
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["fold stale", "REVIEW"]


def test_cli_report_names_the_database_on_stderr_and_json_stays_parseable(backend):
    run_fold(backend.engine, backend.config(), utcnow())
    result = _run(backend, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["invariants"]["ok"] is True
    assert result.stderr.startswith("database: ")


def test_cli_check_refuses_date_and_as_of(sqlite_backend):
    result = _run(sqlite_backend, "--check", "--date", "2026-01-14")
    assert result.exit_code == 2 and result.output.startswith("error: report --check reads the live state")


@pytest.mark.mysql
def test_cli_database_line_hides_the_password(mysql_backend):
    """root has no password on the test server: a wrong one fails to connect after the line is printed."""
    url = mysql_backend.engine.url.set(password="s3cret-pw")
    result = _run(mysql_backend, "--check", **{"database.url": url.render_as_string(hide_password=False)})
    assert result.exit_code != 0
    assert "s3cret-pw" not in result.output
    assert result.stderr.splitlines()[0] == f"database: {url.render_as_string(hide_password=True)}"
    assert "***" in result.stderr.splitlines()[0]
