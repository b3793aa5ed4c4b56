"""GET /metrics: Prometheus text with events by source/auth, fold lag, stuck pending and job stats."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from starlette.testclient import TestClient

from jobs.fold import run_fold
from jobs.runs import recorded_run
from receiver.app import CALLBACK_PATH, create_app
from tests.builders import add_donation, add_patient, append, callback_body

SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (-?[0-9.e+]+)$")


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
        assert before['azamrecon_events_appended_total{source="callback",auth="n/a"}'] == 1
        assert before['azamrecon_events_appended_total{source="poll",auth="n/a"}'] == 1
        assert before["azamrecon_fold_lag_events"] == 2
        assert before["azamrecon_stuck_pending"] == 2
        assert before['azamrecon_job_runs_total{job="poll",outcome="ok"}'] == 1
        assert before["azamrecon_receiver_rows_committed_total"] == 1
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
    assert after["azamrecon_fold_lag_events"] == 0
    assert after["azamrecon_stuck_pending"] == 1
    assert after['azamrecon_donations{status="COMPLETED"}'] == 1


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
        key: int(metrics[f'azamrecon_events_appended_total{{source="{key[0]}",auth="{key[1]}"}}']) for key in full
    } == full
    explain = "EXPLAIN QUERY PLAN " if backend.name == "sqlite" else "EXPLAIN "
    with backend.engine.connect() as connection:
        for statement in statements:
            if "payment_events" not in statement:
                continue
            literal = re.sub(r"%\(\w+\)s|%s|\?", "0", statement)  # every parameter as 0: the plan is what matters
            plan = " ".join(str(cell) for row in connection.exec_driver_sql(explain + literal) for cell in row)
            assert "SCAN payment_events" not in plan and " ALL " not in f" {plan} ", (statement, plan)
