"""The scheduler daemon: registers the jobs with APScheduler 3.x and nothing else.

Every job has an explicit id, max_instances=1, coalesce and a misfire grace time. Two daemons on one
MySQL database are safe: the fold serialises on its checkpoint row lock, poll, the daily report and
privacy retain take a lease lock, and spool ingest is idempotent (dedupe keys).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from datetime import datetime

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from loguru import logger
from sqlalchemy.engine import Engine

from jobs.runs import describe, record_finished_run, recorded_run, utcnow
from pipeline.config import Config
from pipeline.errors import AzamreconError, LockBusy
from pipeline.logs import payments
from pipeline.models import RunOutcome
from pipeline.throttle import SUMMARY_SECONDS, FailureThrottle, failure_reason

Clock = Callable[[], datetime]


class Jobs:
    """The scheduled job bodies. Each reads the clock once and passes `now` down."""

    def __init__(self, engine: Engine, config: Config, clock: Clock = utcnow):
        self.engine, self.config, self.clock = engine, config, clock
        self._client = None
        self._redactor = None

    def client(self):
        if self._client is None:
            from pipeline.azampay import AzamPayClient

            self._client = AzamPayClient(self.config.azampay)
        return self._client

    def redactor(self):
        from pipeline.privacy import redactor_for

        if self._redactor is None:
            self._redactor = redactor_for(self.config)
        return self._redactor

    def fold(self) -> None:
        # The fold runs every fraction of a second; only runs that did something (or failed) are
        # recorded in job_runs, or the table would gain an idle row at every run.
        from jobs.fold import run_fold

        now = self.clock()
        try:
            report = run_fold(self.engine, self.config, now)
        except Exception as exc:
            with contextlib.suppress(AzamreconError):  # the database is down: the fold's own error says so
                record_finished_run(self.engine, "fold", now, self.clock(), RunOutcome.ERROR, error=describe(exc))
            raise
        if report.events:
            record_finished_run(self.engine, "fold", now, self.clock(), RunOutcome.OK, counts=report.as_dict())

    def poll(self) -> None:
        from jobs.fold import run_fold
        from jobs.poll import run_poll

        now = self.clock()
        with recorded_run(self.engine, "poll", now, clock=self.clock) as run:
            report = run_poll(self.engine, self.config, self.client(), now)
            run.counts = report.as_dict()
        run_fold(self.engine, self.config, self.clock())

    def spool(self) -> None:
        from jobs.spool import ingest_spool

        now = self.clock()
        with recorded_run(self.engine, "spool", now, clock=self.clock) as run:
            run.counts = ingest_spool(
                self.engine, self.config.receiver.spool_dir, now, self.redactor(), retell_kept=False
            )

    def retain(self) -> None:
        """privacy.msisdn_retention_days, once a day (jobs.retain.retain; a lease: one daemon at a time)."""
        from jobs.locks import lease
        from jobs.retain import retain

        now = self.clock()
        with recorded_run(self.engine, "privacy-retain", now, clock=self.clock) as run:
            with lease(self.engine, "privacy-retain", now, lease_seconds=3600):
                run.counts = retain(self.engine, self.config, now, clock=self.clock)

    def daily_report(self) -> None:
        from jobs.locks import lease
        from jobs.report import write_daily_report

        now = self.clock()
        with recorded_run(self.engine, "report", now, clock=self.clock) as run:
            with lease(self.engine, "report", now, lease_seconds=3600):
                run.counts = {
                    "path": str(write_daily_report(self.engine, self.config, now, self.config.scheduler.reports_dir))
                }


class FailureReporter:
    """Logs the scheduler's job failures through pipeline.throttle: a failure once, then a summary at most
    every `summary_seconds`, and the recovery. The fold's lines also go to payments.log, beside the
    payment lines they explain the absence of; every failure line is ERROR, so errors.log has them all."""

    def __init__(self, clock: Clock = utcnow, summary_seconds: float = SUMMARY_SECONDS):
        self.clock = clock
        self.throttle = FailureThrottle(summary_seconds)
        self._lock = threading.Lock()  # jobs run on APScheduler's thread pool

    def failed(self, name: str, exc: Exception) -> None:
        with self._lock:
            line = self.throttle.failed(name, failure_reason(exc), describe(exc), self.clock())
        if line is None:
            return
        sink = payments if name == "fold" else logger
        if line.first and not isinstance(exc, AzamreconError):  # a bug: its traceback goes to errors.log, once
            sink.opt(exception=exc).error(line.text)
        else:
            sink.error(line.text)

    def succeeded(self, name: str) -> None:
        with self._lock:
            line = self.throttle.succeeded(name, self.clock())
        if line is not None:
            (payments if name == "fold" else logger).warning(line)


def _guarded(name: str, body: Callable[[], None], failures: FailureReporter) -> Callable[[], None]:
    """Run a job, report its failure (rate-limited) and keep the daemon alive; the next run retries."""

    def run() -> None:
        try:
            body()
        except LockBusy as exc:
            logger.info(f"{name}: skipped, {exc}")
            return
        except Exception as exc:  # the daemon must survive a job's bug
            failures.failed(name, exc)
            return
        failures.succeeded(name)

    return run


def build_scheduler(
    engine: Engine, config: Config, clock: Clock = utcnow, summary_seconds: float = SUMMARY_SECONDS
) -> BlockingScheduler:
    settings = config.scheduler
    jobs = Jobs(engine, config, clock)
    failures = FailureReporter(clock, summary_seconds)
    scheduler = BlockingScheduler(
        timezone="UTC",
        job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": settings.misfire_grace_seconds},
    )
    scheduler.add_job(
        _guarded("fold", jobs.fold, failures),
        "interval",
        seconds=settings.fold_interval_seconds,
        id="fold",
        name="fold",
    )
    scheduler.add_job(
        _guarded("poll", jobs.poll, failures),
        "interval",
        seconds=settings.poll_interval_seconds,
        id="poll",
        name="poll",
    )
    scheduler.add_job(
        _guarded("spool", jobs.spool, failures),
        "interval",
        seconds=settings.spool_interval_seconds,
        id="spool",
        name="spool",
    )
    scheduler.add_job(
        _guarded("report", jobs.daily_report, failures),
        CronTrigger.from_crontab(settings.report_cron, timezone="UTC"),
        id="daily_report",
        name="daily report",
    )
    scheduler.add_job(
        _guarded("privacy-retain", jobs.retain, failures),
        CronTrigger.from_crontab(config.privacy.retain_cron, timezone="UTC"),
        id="privacy_retain",
        name="privacy retain",
    )
    return scheduler


class OverlapFilter(logging.Filter):
    """Drops APScheduler's "skipped: maximum number of running instances reached": with max_instances=1 and
    coalesce that is the design, not news, and a fold slower than its 0.5 s interval (a hung database) would
    print it to stderr every tick, beside the one rate-limited failure line. Other warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


def run_scheduler(
    engine: Engine, config: Config, clock: Clock = utcnow, summary_seconds: float = SUMMARY_SECONDS
) -> None:
    """Run until SIGTERM/SIGINT; a running job finishes before the process exits. summary_seconds: how
    often a repeating job failure is summarised (pipeline.throttle)."""
    scheduler = build_scheduler(engine, config, clock, summary_seconds)
    overlap = OverlapFilter()
    logging.getLogger("apscheduler.scheduler").addFilter(overlap)

    def stop(signum, _frame) -> None:
        logger.info(f"scheduler: signal {signum}, finishing the running job then exiting")
        threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info("scheduler started: " + ", ".join(f"{job.id} ({job.trigger})" for job in scheduler.get_jobs()))
    scheduler.start()
    logger.info("scheduler stopped")
