"""job_runs bookkeeping: every job run is recorded with its counts, outcome and error."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from sqlalchemy import delete, update
from sqlalchemy.engine import Engine

from pipeline.db import transaction
from pipeline.errors import AzamreconError, InputError, LockBusy, NotFound
from pipeline.models import JobRun, RunOutcome


def utcnow() -> datetime:
    return datetime.now(UTC)


USAGE_ERRORS = (InputError, NotFound)  # the caller's mistake, not the job's failure


class RunRecord:
    def __init__(self) -> None:
        self.counts: dict = {}
        self.outcome: str | None = RunOutcome.OK  # None: a usage error, not a run


def describe(exc: BaseException) -> str:
    return (str(exc) if isinstance(exc, AzamreconError) else f"{type(exc).__name__}: {exc}")[:2000]


def record_finished_run(
    engine: Engine,
    job: str,
    started: datetime,
    finished: datetime,
    outcome: str,
    counts: dict | None = None,
    error: str | None = None,
) -> None:
    """One complete job_runs row, for runs too frequent to record while they run (the scheduled fold)."""
    with transaction(engine) as session:
        session.add(
            JobRun(
                job=job,
                started_at=started,
                finished_at=max(finished, started),
                outcome=outcome,
                counts=json.dumps(counts or {}, default=str),
                error=error,
                host=socket.gethostname()[:128],
            )
        )


@contextlib.contextmanager
def recorded_run(
    engine: Engine, job: str, now: datetime, clock: Callable[[], datetime] = utcnow
) -> Iterator[RunRecord]:
    """Insert a `running` job_runs row, yield a RunRecord to fill in, then close the row as ok/skipped/error.

    The job's own transactions are separate from this bookkeeping, so a failed job still leaves its row.
    A usage error (bad input, an unknown donation: USAGE_ERRORS) is not a run of the job: its row is
    removed, so a typo never shows as a failed run; the error still reaches the caller.
    """
    with transaction(engine) as session:
        run = JobRun(job=job, started_at=now, outcome=RunOutcome.RUNNING, counts="{}", host=socket.gethostname()[:128])
        session.add(run)
        session.flush()
        run_id = run.id
    record = RunRecord()
    error: str | None = None
    try:
        yield record
    except LockBusy as exc:
        record.outcome, error = RunOutcome.SKIPPED, str(exc)
    except USAGE_ERRORS:
        record.outcome = None
        raise
    except BaseException as exc:
        record.outcome, error = RunOutcome.ERROR, describe(exc)
        raise
    finally:
        finished = max(clock(), now)
        with contextlib.suppress(AzamreconError):
            with transaction(engine) as session:
                if record.outcome is None:
                    session.execute(delete(JobRun).where(JobRun.id == run_id))
                else:
                    session.execute(
                        update(JobRun)
                        .where(JobRun.id == run_id)
                        .values(
                            finished_at=finished,
                            outcome=record.outcome,
                            counts=json.dumps(record.counts, default=str),
                            error=error,
                        )
                    )
