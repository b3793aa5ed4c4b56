"""Repeated job failures, told once: the first failure, then a summary at most once per interval, then
the recovery. A job that fails every half second (the fold with the database down) would otherwise
write two lines a second that say nothing new, and bury the first one.

Pure: no clock, no logging. The caller passes `now` and logs the line it gets back (docs/monitoring.md,
"Log lines to alert on", lists them):

    fold failed: database unreachable: (2003, "Can't connect to MySQL server ...")
    fold failed 120 times in 60 s: database unreachable
    fold recovered after 121 failures in 61 s
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pipeline.errors import (
    AzamPayAuthError,
    AzamPayError,
    AzamPayUnavailable,
    ConfigError,
    InvariantViolation,
    SchemaMissing,
    StoreConflict,
    StoreError,
    StoreLocked,
    StoreUnavailable,
)

SUMMARY_SECONDS = 60.0


# most specific first: a subclass is named before the class it refines
REASONS = (
    (StoreUnavailable, "database unreachable"),
    (StoreConflict, "lock conflict"),  # MySQL deadlock or lock wait timeout: the transaction was rolled back
    (StoreLocked, "lock timeout"),  # SQLite's busy timeout ran out
    (SchemaMissing, "database not initialised"),
    (StoreError, "database error"),
    (InvariantViolation, "invariant violated"),
    (AzamPayUnavailable, "AzamPay unreachable"),
    (AzamPayAuthError, "AzamPay refused the credentials"),
    (AzamPayError, "AzamPay error"),
    (ConfigError, "config error"),
    (OSError, "file system error"),
)


def failure_reason(exc: BaseException) -> str:
    """A short, stable name for why a job failed: the key repeats are counted under and the summary's tail.
    The driver errors were already sorted by pipeline.db.translate into classes; this only names them."""
    for kind, reason in REASONS:
        if isinstance(exc, kind):
            return reason
    return type(exc).__name__  # a bug: the class is the stable part, the message may carry values


def first_line(job: str, reason: str, detail: str) -> str:
    """`{job} failed: {reason}: {detail}`, the reason not said twice when the detail starts with it
    ("database unreachable: ...", "fold invariant violated: ..."): the prefix up to the reason is what alerts grep."""
    detail = detail.removeprefix(f"{job} ").removeprefix(reason).removeprefix(": ") if reason in detail else detail
    return f"{job} failed: {reason}: {detail}" if detail else f"{job} failed: {reason}"


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _failures(count: int) -> str:
    return "1 failure" if count == 1 else f"{count} failures"


def _seconds(start: datetime, end: datetime) -> int:
    return max(0, round((end - start).total_seconds()))


@dataclass(frozen=True)
class FailureLine:
    text: str
    first: bool  # the first failure of its job and reason (the caller may add the traceback of a bug)


@dataclass
class _Streak:
    told_at: datetime  # when this (job, reason) was last logged: its first failure or its last summary
    untold: int = 0  # failures since then


@dataclass
class _Outage:
    since: datetime  # the job's first failure since it last succeeded
    failures: int = 0


class FailureThrottle:
    """Which failure lines to log, keyed by job and reason; one instance per process (not thread-safe:
    the caller serialises). A new reason for a failing job is logged at once, as a first failure."""

    def __init__(self, summary_seconds: float = SUMMARY_SECONDS):
        self.summary_seconds = summary_seconds
        self._streaks: dict[tuple[str, str], _Streak] = {}
        self._outages: dict[str, _Outage] = {}

    def failed(self, job: str, reason: str, detail: str, now: datetime) -> FailureLine | None:
        """The line to log for this failure, or None when it was already told within the interval."""
        outage = self._outages.setdefault(job, _Outage(since=now))
        outage.failures += 1
        streak = self._streaks.get((job, reason))
        if streak is None:
            self._streaks[job, reason] = _Streak(told_at=now)
            return FailureLine(first_line(job, reason, detail), first=True)
        streak.untold += 1
        if (now - streak.told_at).total_seconds() < self.summary_seconds:
            return None
        line = f"{job} failed {_times(streak.untold)} in {_seconds(streak.told_at, now)} s: {reason}"
        streak.told_at, streak.untold = now, 0
        return FailureLine(line, first=False)

    def succeeded(self, job: str, now: datetime) -> str | None:
        """`{job} recovered after N failures in S s` when the job was failing, else None; forgets its streaks."""
        outage = self._outages.pop(job, None)
        if outage is None:
            return None
        for key in [key for key in self._streaks if key[0] == job]:
            del self._streaks[key]
        return f"{job} recovered after {_failures(outage.failures)} in {_seconds(outage.since, now)} s"

    def failing(self, job: str) -> bool:
        return job in self._outages
