"""GET /metrics in Prometheus text format. Reads only; computed off the event loop."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from pipeline.db import transaction
from pipeline.errors import StoreError
from pipeline.store import metrics as queries

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# (metric, help, attribute): this worker's group-commit writer, and SQLite's log copier (receiver.wal)
WRITER_COUNTERS = (
    ("azamrecon_receiver_rows_committed_total", "Callbacks committed by this worker.", "rows_committed"),
    ("azamrecon_receiver_batches_total", "Group-commit transactions by this worker.", "batches"),
    ("azamrecon_receiver_rows_spooled_total", "Callbacks spooled to disk by this worker.", "rows_spooled"),
)
WAL_COUNTERS = (
    (
        "azamrecon_receiver_wal_checkpoints_total",
        "Rounds that copied SQLite's write-ahead log, by this worker.",
        "rounds",
    ),
    (
        "azamrecon_receiver_wal_catch_ups_total",
        "Copies the writer finished between two groups, so the log started over.",
        "catch_ups",
    ),
    (
        "azamrecon_receiver_wal_checkpoint_failures_total",
        "Log copies that failed (the log grows meanwhile; commits stay durable).",
        "failures",
    ),
)


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            rendered = ",".join(f'{key}="{_label(val)}"' for key, val in labels.items())
            self.lines.append(f"{name}{{{rendered}}} {value}" if rendered else f"{name} {value}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(engine, config, writer, now: datetime) -> str:
    with transaction(engine) as session:
        events = queries.events_by_source_and_auth(session)
        lag_events, lag_seconds = queries.lag(session, now)
        stuck = queries.stuck_pending(session, now, config.poll.threshold_minutes)
        statuses = queries.donations_by_status(session)
        jobs = queries.job_stats(session)
    out = Exposition()
    out.metric(
        "azamrecon_events_appended_total",
        "counter",
        "Events in the log, by source and auth.",
        [({"source": s, "auth": a}, n) for (s, a), n in sorted(events.items())],
    )
    out.metric("azamrecon_fold_lag_events", "gauge", "Events appended but not yet folded.", [({}, lag_events)])
    out.metric(
        "azamrecon_fold_lag_seconds", "gauge", "Age of the oldest event not yet folded.", [({}, round(lag_seconds, 3))]
    )
    out.metric(
        "azamrecon_stuck_pending",
        "gauge",
        f"Donations PENDING for more than {config.poll.threshold_minutes:g} minutes.",
        [({}, stuck)],
    )
    out.metric(
        "azamrecon_donations",
        "gauge",
        "Donations by status.",
        [({"status": s}, n) for s, n in sorted(statuses.items())],
    )
    out.metric(
        "azamrecon_job_runs_total",
        "counter",
        "Recorded job runs by outcome.",
        [
            ({"job": job, "outcome": outcome}, n)
            for job, data in sorted(jobs.items())
            for outcome, n in sorted(data["outcomes"].items())
        ],
    )
    out.metric(
        "azamrecon_job_failures_total",
        "counter",
        "Job runs that ended in error.",
        [({"job": job}, data["outcomes"].get("error", 0)) for job, data in sorted(jobs.items())],
    )
    out.metric(
        "azamrecon_job_last_duration_seconds",
        "gauge",
        "Duration of the latest finished run.",
        [
            ({"job": job}, round(data["last_duration"], 3))
            for job, data in sorted(jobs.items())
            if data["last_duration"] is not None
        ],
    )
    if writer is not None:
        counters = [(name, text, getattr(writer, attr)) for name, text, attr in WRITER_COUNTERS]
        if writer.checkpointer is not None:  # SQLite: the write-ahead log is copied off the group commit
            counters += [(name, text, getattr(writer.checkpointer, attr)) for name, text, attr in WAL_COUNTERS]
        for name, text, value in counters:
            out.metric(name, "counter", text, [({}, value)])
    return out.text()


def endpoint(engine, config, writer):
    async def metrics(request: Request) -> PlainTextResponse:
        try:
            text = await run_in_threadpool(render, engine, config, writer, datetime.now(UTC))
        except StoreError as exc:
            return PlainTextResponse(f"# database unavailable: {exc}\n", status_code=503, media_type=CONTENT_TYPE)
        return PlainTextResponse(text, media_type=CONTENT_TYPE)

    return metrics
