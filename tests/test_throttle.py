"""pipeline.throttle over a fake clock: a repeated failure is told once, then summarised at most once per
interval, and its recovery is told once; the reasons are short and stable."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.db import translate
from pipeline.errors import (
    AzamPayUnavailable,
    InvariantViolation,
    StoreConflict,
    StoreError,
    StoreUnavailable,
)
from pipeline.throttle import FailureThrottle, failure_reason, first_line

T0 = datetime(2026, 1, 14, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def lines_of(throttle: FailureThrottle, events) -> list[str]:
    """events: (seconds, job, reason or None for a success)."""
    out = []
    for seconds, job, reason in events:
        if reason is None:
            line = throttle.succeeded(job, at(seconds))
            if line is not None:
                out.append(line)
        else:
            line = throttle.failed(job, reason, "detail", at(seconds))
            if line is not None:
                out.append(line.text)
    return out


def test_a_failure_every_half_second_is_told_once_then_once_a_minute_then_its_recovery():
    throttle = FailureThrottle()
    failures = [(i * 0.5, "fold", "database unreachable") for i in range(241)]  # 0 .. 120 s
    lines = lines_of(throttle, [*failures, (120.5, "fold", None), (121.0, "fold", None)])
    assert lines == [
        "fold failed: database unreachable: detail",
        "fold failed 120 times in 60 s: database unreachable",
        "fold failed 120 times in 60 s: database unreachable",
        "fold recovered after 241 failures in 120 s",  # the second success says nothing
    ]


def test_jobs_and_reasons_are_counted_apart_and_a_new_reason_is_told_at_once():
    throttle = FailureThrottle(summary_seconds=10)
    lines = lines_of(
        throttle,
        [
            (0, "fold", "database unreachable"),
            (1, "poll", "AzamPay unreachable"),
            (2, "fold", "database unreachable"),
            (3, "fold", "lock timeout"),  # a new reason: told now, not in a minute
            (4, "fold", "lock timeout"),
            (11, "fold", "database unreachable"),
            (12, "poll", None),
            (13, "fold", None),
        ],
    )
    assert lines == [
        "fold failed: database unreachable: detail",
        "poll failed: AzamPay unreachable: detail",
        "fold failed: lock timeout: detail",
        "fold failed 2 times in 11 s: database unreachable",
        "poll recovered after 1 failure in 11 s",
        "fold recovered after 5 failures in 13 s",
    ]


def test_after_a_recovery_the_next_failure_is_a_first_failure_again():
    throttle = FailureThrottle(summary_seconds=60)
    assert throttle.failed("spool", "file system error", "x", at(0)).first
    assert throttle.failed("spool", "file system error", "x", at(1)) is None
    assert throttle.succeeded("spool", at(2)) == "spool recovered after 2 failures in 2 s"
    assert not throttle.failing("spool")
    again = throttle.failed("spool", "file system error", "x", at(3))
    assert again.first and again.text == "spool failed: file system error: x"
    assert throttle.succeeded("report", at(4)) is None  # never failed: nothing to say


def test_one_failure_past_the_interval_is_summarised_as_once():
    throttle = FailureThrottle(summary_seconds=60)
    throttle.failed("report", "database error", "x", at(0))
    line = throttle.failed("report", "database error", "x", at(86400))
    assert line.text == "report failed once in 86400 s: database error" and not line.first


@pytest.mark.parametrize(
    "exc, reason",
    [
        (StoreUnavailable('database unreachable: (2003, "Can\'t connect")'), "database unreachable"),
        (StoreConflict("database conflict: (1205, 'Lock wait timeout exceeded')"), "lock conflict"),
        # as the driver raises them: pipeline.db.translate sorts them into classes, the reason names the class
        (translate(sqlite3.OperationalError("database is locked")), "lock timeout"),
        (translate(sqlite3.OperationalError("no such table: payment_events")), "database not initialised"),
        (StoreError("database error: (1366, 'Incorrect decimal value')"), "database error"),
        (InvariantViolation("fold invariant violated: patient 3"), "invariant violated"),
        (AzamPayUnavailable("read timeout"), "AzamPay unreachable"),
        (PermissionError(13, "Permission denied"), "file system error"),
        (KeyError("donation"), "KeyError"),
    ],
)
def test_reasons_are_short_and_stable(exc, reason):
    assert failure_reason(exc) == reason


def test_the_first_line_does_not_say_the_reason_twice():
    assert first_line("fold", "database unreachable", "database unreachable: (2003, 'x')") == (
        "fold failed: database unreachable: (2003, 'x')"
    )
    assert first_line("poll", "AzamPay unreachable", "read timeout") == "poll failed: AzamPay unreachable: read timeout"
    assert first_line("fold", "KeyError", "") == "fold failed: KeyError"
    assert first_line("fold", "invariant violated", "fold invariant violated: patient 3") == (
        "fold failed: invariant violated: patient 3"
    )


def test_apschedulers_overlap_warning_is_dropped_and_others_pass():
    """A fold slower than its interval must not print APScheduler's skip warning every tick (a real scheduler)."""
    import logging
    import time

    from apscheduler.schedulers.background import BackgroundScheduler

    from jobs.scheduler import OverlapFilter

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    source = logging.getLogger("apscheduler.scheduler")
    keep, overlap = Keep(level=logging.WARNING), OverlapFilter()
    source.addHandler(keep)
    try:
        scheduler = BackgroundScheduler(job_defaults={"max_instances": 1, "coalesce": True})
        scheduler.add_job(time.sleep, "interval", seconds=0.05, args=[0.4], id="slow")
        scheduler.start()
        time.sleep(0.3)
        unfiltered = list(seen)
        source.addFilter(overlap)
        seen.clear()
        time.sleep(0.3)
        source.warning("some other warning")
        scheduler.shutdown(wait=True)
    finally:
        source.removeHandler(keep)
        source.removeFilter(overlap)
    assert any("maximum number of running instances reached" in line for line in unfiltered)  # it does fire
    assert seen == ["some other warning"]
