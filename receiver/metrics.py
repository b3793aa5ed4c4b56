"""GET /metrics in Prometheus text format, with prometheus_client; computed off the event loop.

The receiver's own counters (callbacks committed, spooled, answers, SQLite's log copies) are
prometheus_client Counters. Under `serve`, PROMETHEUS_MULTIPROC_DIR names receiver.metrics_dir before any
worker starts, so every worker writes its counters to files there and each scrape, whichever worker answers
it, sums every worker's files (MultiProcessCollector): a counter never goes down between two scrapes. The
files of workers that have exited are kept (their counts stay in the sum, across restarts too); `serve`
folds them into one file at startup (`compact`), so the directory does not grow with every restart.

The database facts are gauges read per scrape by indexed lookups (pipeline.store.metrics), never stored in
those files: no gauge file of a dead worker can linger. docs/monitoring.md lists every metric.
"""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from pipeline.anomaly_kinds import ANOMALY_KINDS
from pipeline.db import transaction
from pipeline.errors import StoreError
from pipeline.models import RunOutcome
from pipeline.store import metrics as queries
from receiver.prometheus_adapter import counter_files, read_counter_values, write_counter_file

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
COMPACTED = "counter_compacted.db"  # the counts of exited workers, summed by `compact`


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class ReceiverCounters:
    """One worker's counters. Under multiprocess mode one set per process: two Counters of one name in
    one process would overwrite each other's file entry."""

    def __init__(self) -> None:
        self.rows_committed = Counter(
            "azamrecon_receiver_rows_committed", "Callbacks committed, by every worker.", registry=None
        )
        self.batches = Counter(
            "azamrecon_receiver_batches", "Group-commit transactions, by every worker.", registry=None
        )
        self.rows_spooled = Counter(
            "azamrecon_receiver_rows_spooled", "Callbacks spooled to disk, by every worker.", registry=None
        )
        self.answers = Counter(
            "azamrecon_receiver_answers", "Callback requests answered, by status code.", ["code"], registry=None
        )

    def counters(self) -> list[Counter]:
        return [self.rows_committed, self.batches, self.rows_spooled, self.answers]


class WalCounters:
    """SQLite's log copier (receiver.wal), one set per process like ReceiverCounters."""

    def __init__(self) -> None:
        self.rounds = Counter(
            "azamrecon_receiver_wal_checkpoints", "Rounds that copied SQLite's write-ahead log.", registry=None
        )
        self.catch_ups = Counter(
            "azamrecon_receiver_wal_catch_ups",
            "Copies the writer finished between two groups, so the log started over.",
            registry=None,
        )
        self.failures = Counter(
            "azamrecon_receiver_wal_checkpoint_failures",
            "Log copies that failed (the log grows meanwhile; commits stay durable).",
            registry=None,
        )

    def counters(self) -> list[Counter]:
        return [self.rounds, self.catch_ups, self.failures]


_per_process: dict[type, object] = {}


def process_counters(kind: type):
    """The process's one set under multiprocess mode; otherwise a set of its own (each app in a test)."""
    if multiprocess_dir() is None:
        return kind()
    if kind not in _per_process:
        _per_process[kind] = kind()
    return _per_process[kind]


def prepare_dir(path: str | Path) -> Path:
    """Create the metrics directory (0750) and fold the files of exited workers into one (`compact`)."""
    directory = Path(path)
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    compact(directory)
    return directory


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def compact(directory: Path) -> int:
    """Sum the counter files of processes that are gone into COMPACTED, then remove them; a live process's
    file is left alone. Returns the files folded. Counters keep their values: nothing is reset."""
    dead = [path for path, pid in counter_files(directory) if pid.isdigit() and not _alive(int(pid))]
    if not dead:
        return 0
    target = directory / COMPACTED
    sums: dict[str, float] = defaultdict(float)
    for path in [*dead, *([target] if target.exists() else [])]:
        for key, value in read_counter_values(path):
            sums[key] += value
    partial = directory / (COMPACTED + ".partial")  # not *.db: the collector never reads it
    partial.unlink(missing_ok=True)
    write_counter_file(partial, sums)
    os.replace(partial, target)
    for path in dead:
        os.unlink(path)
    return len(dead)


class _Families:
    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        return self.families


class _Counters:
    def __init__(self, counters: list[Counter]) -> None:
        self.counters = counters

    def collect(self):
        for counter in self.counters:
            yield from counter.collect()


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


# the jobs' label is `task`: Prometheus gives every series its own `job` (the scrape job), and renames a
# scraped `job` to `exported_job`
def _labelled(name: str, text: str, label: str, values: dict) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def database_families(engine, config, now: datetime) -> list:
    """The gauges (and the log's counter) read from the database: indexed lookups and capped counts."""
    with transaction(engine) as session:
        fold = queries.fold_facts(session)
        events = queries.events_by_source_and_auth(session, fold)
        open_donations = queries.donations_by_open_status(session)
        stuck, stuck_old = queries.stuck_pending_counts(session, now, config.poll)
        anomalies = queries.unacknowledged_anomalies(session)
        jobs = queries.job_facts(session)
    appended = CounterMetricFamily(
        "azamrecon_events_appended", "Events in the log, by source and auth.", labels=["source", "auth"]
    )
    for (source, auth), count in sorted(events.items()):
        appended.add_metric([source, auth], count)
    successes = {job: fact.last_success.timestamp() for job, fact in jobs.items() if fact.last_success}
    fold_success = queries.fold_last_success(fold, jobs)
    if fold_success is not None:
        successes["fold"] = fold_success.timestamp()
    alerts = config.alerts
    thresholds = {
        "fold_stale_seconds": alerts.fold_stale_seconds,
        "max_lag_seconds": alerts.max_lag_seconds,
        "max_review": alerts.max_review,
        "max_stuck_pending": alerts.max_stuck_pending,
    }
    return [
        appended,
        _gauge("azamrecon_fold_lag_events", "Events appended but not yet folded.", fold.lag_events),
        _gauge(
            "azamrecon_fold_lag_seconds", "Age of the oldest event not yet folded.", round(fold.lag_seconds(now), 3)
        ),
        _gauge(
            "azamrecon_fold_invariant_violated",
            "1 while the latest recorded fold failed on an invariant and no batch has committed since.",
            int(queries.invariant_failing(fold, jobs)),
        ),
        _labelled(
            "azamrecon_job_last_success_timestamp_seconds",
            "Unix time of the job's latest successful run (the fold: its latest committed batch).",
            "task",
            successes,
        ),
        _labelled(
            "azamrecon_job_last_duration_seconds",
            "Duration of the job's latest finished run.",
            "task",
            {job: round(fact.last_duration, 3) for job, fact in jobs.items() if fact.last_duration is not None},
        ),
        _labelled(
            "azamrecon_job_last_failed",
            "1 when the job's latest finished run ended in error.",
            "task",
            {job: int(fact.last_outcome == RunOutcome.ERROR) for job, fact in jobs.items() if fact.last_outcome},
        ),
        _labelled("azamrecon_donations", "Donations PENDING and in REVIEW.", "status", open_donations),
        _gauge(
            "azamrecon_stuck_pending",
            f"Donations PENDING for more than poll.threshold_minutes ({config.poll.threshold_minutes:g}).",
            stuck,
        ),
        _gauge(
            "azamrecon_stuck_pending_past_max_age",
            f"Donations still PENDING past poll.max_age_hours ({config.poll.max_age_hours:g}): the poller "
            "should have settled them.",
            stuck_old,
        ),
        _labelled(
            "azamrecon_unacknowledged_anomalies",
            "Anomalies on donations still PENDING or REVIEW, and of events still waiting for a donation, by kind "
            f"(each part counted up to {queries.ANOMALY_CAP}).",
            "kind",
            {kind: anomalies.get(kind, 0) for kind in sorted(set(ANOMALY_KINDS) | set(anomalies))},
        ),
        _gauge(
            "azamrecon_spool_files",
            "Files in receiver.spool_dir: callbacks spooled in an outage, not yet replayed.",
            queries.spool_files(config.receiver.spool_dir),
        ),
        _labelled(
            "azamrecon_alert_threshold",
            "The alerts.* settings of config.yaml, for the alert rules.",
            "alert",
            thresholds,
        ),
    ]


def render(engine, config, writer, now: datetime) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(database_families(engine, config, now)))
    path = multiprocess_dir()
    if path is not None:
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry, path)
    elif writer is not None:
        counters = writer.counters.counters()
        if writer.checkpointer is not None:  # SQLite: the write-ahead log is copied off the group commit
            counters += writer.checkpointer.counters.counters()
        registry.register(_Counters(counters))
    return generate_latest(registry).decode()


def endpoint(engine, config, writer):
    async def metrics(request: Request) -> Response:
        try:
            text = await run_in_threadpool(render, engine, config, writer, datetime.now(UTC))
        except StoreError as exc:
            return Response(f"# database unavailable: {exc}\n", status_code=503, media_type=CONTENT_TYPE)
        return Response(text, media_type=CONTENT_TYPE)

    return metrics
