"""Lease locks in the database, for jobs that must not run twice at once across daemons (poll, report).

The fold does not use these: it holds its lock for exactly its transaction (pipeline.store.state).
A lease is taken with one atomic UPDATE, so two daemons racing for it cannot both win, and a holder
that died loses it after `lease_seconds`.
"""
from __future__ import annotations

import contextlib
import os
import socket
import uuid
from datetime import datetime, timedelta
from typing import Iterator

from sqlalchemy import insert, or_, update
from sqlalchemy.engine import Engine

from pipeline.db import transaction
from pipeline.errors import LockBusy
from pipeline.models import JobLock


def holder_name() -> str:
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def acquire(engine: Engine, name: str, holder: str, now: datetime, lease_seconds: float) -> bool:
    with transaction(engine) as session:
        statement = insert(JobLock).prefix_with("OR IGNORE", dialect="sqlite").prefix_with("IGNORE", dialect="mysql")
        session.execute(statement.values(name=name, holder=None, acquired_at=None))
        taken = session.execute(
            update(JobLock)
            .where(JobLock.name == name)
            .where(or_(JobLock.holder.is_(None), JobLock.acquired_at < now - timedelta(seconds=lease_seconds)))
            .values(holder=holder, acquired_at=now)
        )
        return taken.rowcount == 1


def release(engine: Engine, name: str, holder: str) -> None:
    with transaction(engine) as session:
        session.execute(update(JobLock).where(JobLock.name == name, JobLock.holder == holder).values(holder=None, acquired_at=None))


@contextlib.contextmanager
def lease(engine: Engine, name: str, now: datetime, lease_seconds: float = 600.0) -> Iterator[str]:
    """`with lease(engine, "poll", now):` runs the block only if no live holder has the lease; LockBusy otherwise."""
    holder = holder_name()
    if not acquire(engine, name, holder, now, lease_seconds):
        raise LockBusy(f"{name}: another worker holds the lock")
    try:
        yield holder
    finally:
        release(engine, name, holder)
