"""Lease locks in the database, for jobs that must not run twice at once across daemons (poll, report).

The fold does not use these: it holds its lock for exactly its transaction (pipeline.store.checkpoint.CheckpointRows.lock_checkpoint).
A lease is taken with one atomic conditional UPDATE, so two daemons racing for it cannot both win;
a holder that died loses it after `lease_seconds`; a long run renews it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

from sqlalchemy import insert, or_, select, update
from sqlalchemy.engine import Engine

from pipeline.db import transaction
from pipeline.errors import LockBusy
from pipeline.models import JobLock


def holder_name() -> str:
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def acquire(engine: Engine, name: str, holder: str, now: datetime, lease_seconds: float) -> None:
    """Take lease `name` or raise LockBusy naming the current holder."""
    with transaction(engine, immediate=True) as session:
        session.execute(
            insert(JobLock).prefix_with("OR IGNORE", dialect="sqlite").prefix_with("IGNORE", dialect="mysql"),
            {"name": name, "holder": None, "acquired_at": None},
        )
        taken = session.execute(
            update(JobLock)
            .where(
                JobLock.name == name,
                or_(
                    JobLock.holder.is_(None),
                    JobLock.acquired_at.is_(None),
                    JobLock.acquired_at < now - timedelta(seconds=lease_seconds),
                ),
            )
            .values(holder=holder, acquired_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken == 1:
            return
        row = session.execute(select(JobLock.holder, JobLock.acquired_at).where(JobLock.name == name)).one_or_none()
    who, since = row or (None, None)
    detail = f" ({who}, since {since:%Y-%m-%d %H:%M:%S} UTC)" if since else ""
    raise LockBusy(f"{name}: another worker holds the lock{detail}")


def renew(engine: Engine, name: str, holder: str, at: datetime) -> bool:
    """Push the lease's expiry forward; False when it is no longer ours."""
    with transaction(engine, immediate=True) as session:
        return (
            session.execute(
                update(JobLock)
                .where(JobLock.name == name, JobLock.holder == holder)
                .values(acquired_at=at)
                .execution_options(synchronize_session=False)
            ).rowcount
            == 1
        )


def release(engine: Engine, name: str, holder: str) -> None:
    with transaction(engine, immediate=True) as session:
        session.execute(
            update(JobLock)
            .where(JobLock.name == name, JobLock.holder == holder)
            .values(holder=None)
            .execution_options(synchronize_session=False)
        )


@contextlib.contextmanager
def lease(engine: Engine, name: str, now: datetime, lease_seconds: float = 600.0) -> Iterator[str]:
    """`with lease(engine, "report", now):` runs the block only if no live holder has the lease; LockBusy otherwise."""
    holder = holder_name()
    acquire(engine, name, holder, now, lease_seconds)
    try:
        yield holder
    finally:
        release(engine, name, holder)
