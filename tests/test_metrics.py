"""GET /metrics: Prometheus text with events by source/auth, fold lag, stuck pending, anomalies, jobs and the\nreceiver's counters."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from starlette.testclient import TestClient

from jobs.fold import run_fold
from jobs.runs import recorded_run
from receiver.app import CALLBACK_PATH, create_app
from tests.builders import add_donation, add_patient, append, callback_body

SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (-?[0-9.e+]+|NaN|[+-]Inf)$")


def parse(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, f"not Prometheus text: {line!r}"
        values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return values


def test_metrics_report_log_lag_stuck_and_jobs(backend):
    now = datetime.now(UTC)
    patient = add_patient(backend.engine, now - timedelta(hours=1))
    _, reference = add_donation(backend.engine, now - timedelta(hours=1), patient)
    add_donation(backend.engine, now - timedelta(hours=1), patient)  # stays PENDING: stuck
    add_donation(backend.engine, now - timedelta(hours=30), patient)  # PENDING past poll.max_age_hours
    with recorded_run(backend.engine, "poll", now):
        pass
    app = create_app(backend.config())
    with TestClient(app) as client:
        assert (
            client.post(
                CALLBACK_PATH, content=callback_body(reference), headers={"content-type": "application/json"}
            ).status_code
            == 200
        )
        append(backend.engine, b"{}", now, source="poll", auth="n/a", status="PENDING")
        before = parse(client.get("/metrics").text)
        assert before['azamrecon_events_appended_total{auth="n/a",source="callback"}'] == 1
        assert before['azamrecon_events_appended_total{auth="n/a",source="poll"}'] == 1
        assert before["azamrecon_fold_lag_events"] == 2
        assert before["azamrecon_fold_lag_seconds"] >= 0
        assert before["azamrecon_stuck_pending"] == 3
        assert before["azamrecon_stuck_pending_past_max_age"] == 1
        assert before['azamrecon_job_last_success_timestamp_seconds{task="poll"}'] == pytest.approx(
            now.timestamp(), abs=5
        )
        assert before['azamrecon_job_last_failed{task="poll"}'] == 0
        assert before["azamrecon_receiver_rows_committed_total"] == 1
        assert before["azamrecon_receiver_batches_total"] == 1
        assert before['azamrecon_receiver_answers_total{code="200"}'] == 1
        assert before["azamrecon_spool_files"] == 0
        assert before['azamrecon_alert_threshold{alert="max_lag_seconds"}'] == 60
        if backend.name == "sqlite":
            app.state.checkpointer.checkpoint()
            copied = parse(client.get("/metrics").text)
            assert (
                copied["azamrecon_receiver_wal_checkpoints_total"]
                == before["azamrecon_receiver_wal_checkpoints_total"] + 1
            )
            assert copied["azamrecon_receiver_wal_checkpoint_failures_total"] == 0
            assert "azamrecon_receiver_wal_catch_ups_total" in copied
        else:
            assert not any(name.startswith("azamrecon_receiver_wal_") for name in before)
        run_fold(backend.engine, backend.config(), now)
        response = client.get("/metrics")
        after = parse(response.text)
    assert response.headers["content-type"].startswith("text/plain")
    assert after["azamrecon_fold_lag_events"] == 0 and after["azamrecon_fold_lag_seconds"] == 0
    assert after["azamrecon_stuck_pending"] == 2
    assert after['azamrecon_donations{status="PENDING"}'] == 2
    assert after['azamrecon_donations{status="REVIEW"}'] == 0
    assert after['azamrecon_job_last_success_timestamp_seconds{task="fold"}'] == pytest.approx(now.timestamp(), abs=5)
    assert after["azamrecon_fold_invariant_violated"] == 0


def test_unacknowledged_anomalies_are_those_still_open(backend):
    """An anomaly on a PENDING or REVIEW donation, or of an event still waiting for a donation, counts; one
    on a donation the fold settled does not."""
    from receiver.metrics import render

    now = datetime.now(UTC)
    _, review = add_donation(backend.engine, now)
    _, settled = add_donation(backend.engine, now)
    append(backend.engine, callback_body(review, amount="1", transaction_id="tx-r"), now, auth="verified")
    append(backend.engine, callback_body(settled, transaction_id="tx-s"), now, auth="verified")
    append(backend.engine, callback_body(settled, transaction_id="tx-s2"), now, auth="verified")  # duplicate
    append(backend.engine, callback_body("RHCI-DN-999-20251219120000", transaction_id="tx-u"), now, auth="verified")
    run_fold(backend.engine, backend.config(), now)
    metrics = parse(render(backend.engine, backend.config(), None, now))
    assert metrics['azamrecon_unacknowledged_anomalies{kind="amount_mismatch"}'] == 1
    assert metrics['azamrecon_unacknowledged_anomalies{kind="unknown_reference"}'] == 1
    assert metrics['azamrecon_unacknowledged_anomalies{kind="duplicate"}'] == 0  # its donation is COMPLETED
    assert metrics['azamrecon_donations{status="REVIEW"}'] == 1


def test_invariant_failure_and_job_failures_show(backend):
    from jobs.runs import record_finished_run
    from receiver.metrics import render

    now = datetime.now(UTC)
    run_fold(backend.engine, backend.config(), now - timedelta(seconds=10))
    record_finished_run(backend.engine, "fold", now, now, "error", error="fold invariant violated: patient 3")
    record_finished_run(backend.engine, "spool", now, now, "error", error="disk full")
    metrics = parse(render(backend.engine, backend.config(), None, now))
    assert metrics["azamrecon_fold_invariant_violated"] == 1
    assert metrics['azamrecon_job_last_failed{task="spool"}'] == 1
    assert 'azamrecon_job_last_success_timestamp_seconds{task="spool"}' not in metrics
    run_fold(backend.engine, backend.config(), now + timedelta(seconds=1))  # a batch commits: no longer failing
    assert parse(render(backend.engine, backend.config(), None, now))["azamrecon_fold_invariant_violated"] == 0


def test_spool_files_count_non_empty_spool_files(tmp_path):
    from pipeline.store.metrics import spool_files

    assert spool_files(tmp_path / "missing") == 0
    (tmp_path / "callbacks-a.jsonl").write_text("{}\n")
    (tmp_path / "callbacks-b.jsonl.claimed").write_text("{}\n")
    (tmp_path / "callbacks-c.jsonl").write_text("")  # a receiver's file, nothing in it
    (tmp_path / "notes.txt").write_text("x")
    assert spool_files(tmp_path) == 2


def test_metrics_answer_503_when_the_database_is_down(sqlite_backend, tmp_path):
    config = sqlite_backend.config(**{"database.url": f"sqlite:///{tmp_path}/gone/nowhere/x.db"})
    with TestClient(create_app(config)) as client:
        response = client.get("/metrics")
        health = client.get("/healthz")
    assert response.status_code == 503 and "database unavailable" in response.text
    assert health.status_code == 503


def test_metrics_never_scan_the_whole_log(backend):
    """Hostile traffic, fault 8: each /metrics call counted every event (0.3 s at 496,000). The counts come
    from the fold's running totals plus the events after its position, and equal a full count."""
    from sqlalchemy import event as sa_event

    from receiver.metrics import render

    config = backend.config()
    _, reference = add_donation(backend.engine, datetime(2026, 1, 14, tzinfo=UTC))
    at = datetime(2026, 1, 14, 9, 30, tzinfo=UTC)
    for n in range(30):
        append(
            backend.engine, callback_body(reference, transaction_id=f"tx-{n}"), at + timedelta(seconds=n), auth="n/a"
        )
    append(backend.engine, b"{}", at, source="poll", status="PENDING", donation_id=1)
    run_fold(backend.engine, config, at + timedelta(minutes=1))
    append(
        backend.engine, callback_body(reference, transaction_id="tx-late"), at + timedelta(minutes=2), auth="unverified"
    )  # not folded yet
    statements: list[str] = []
    listener = lambda conn, cursor, statement, params, context, many: statements.append(statement)  # noqa: E731
    sa_event.listen(backend.engine, "before_cursor_execute", listener)
    try:
        metrics = parse(render(backend.engine, config, None, at + timedelta(minutes=3)))
    finally:
        sa_event.remove(backend.engine, "before_cursor_execute", listener)
    full = {
        (row[0], row[1]): row[2]
        for row in backend.rows("SELECT source, auth, COUNT(*) FROM payment_events GROUP BY source, auth")
    }
    assert {
        key: int(metrics[f'azamrecon_events_appended_total{{auth="{key[1]}",source="{key[0]}"}}']) for key in full
    } == full
    explain = "EXPLAIN QUERY PLAN " if backend.name == "sqlite" else "EXPLAIN "
    with backend.engine.connect() as connection:
        for statement in statements:
            if "payment_events" not in statement:
                continue
            literal = re.sub(r"%\(\w+\)s|%s|\?", "0", statement)  # every parameter as 0: the plan is what matters
            plan = " ".join(str(cell) for row in connection.exec_driver_sql(explain + literal) for cell in row)
            assert "SCAN payment_events" not in plan and " ALL " not in f" {plan} ", (statement, plan)
