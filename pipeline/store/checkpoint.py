"""The fold's checkpoint: its name, its row as a value, its gaps, its position for readers (fold_position), and
SqlFoldStore's checkpoint role (lock, read, save). How far the log is ahead of it (the lag) is
pipeline.store.metrics.fold_facts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from pipeline.models import FoldCheckpoint
from pipeline.store.fold_rows import Rows

CHECKPOINT = "main"  # the fold's checkpoint row; its lock is the fold's lock


@dataclass
class Checkpoint:
    name: str
    position: int = 0
    gaps: list[tuple[int, datetime]] = field(default_factory=list)
    events_applied: int = 0
    donation_high: int = 0
    rebuild_until: int | None = None  # a rebuild is refolding the log up to this event id

    def gap_ids(self) -> list[int]:
        return [gap_id for gap_id, _ in self.gaps]


def checkpoint_of(row: FoldCheckpoint) -> Checkpoint:
    gaps = [
        (gap_id, seen)
        for first, last, stamp in json.loads(row.gaps or "[]")
        for seen in (datetime.fromisoformat(stamp),)
        for gap_id in range(int(first), int(last) + 1)
    ]
    return Checkpoint(row.name, row.position, gaps, row.events_applied, row.donation_high, row.rebuild_until)


def gap_ranges(gaps: list[tuple[int, datetime]]) -> list[list]:
    """Gaps as [[first id, last id, first seen], ...]: a run of missing ids seen together is one entry."""
    ranges: list[list] = []
    for gap_id, seen in sorted(gaps):
        stamp = seen.isoformat()
        if ranges and ranges[-1][1] == gap_id - 1 and ranges[-1][2] == stamp:
            ranges[-1][1] = gap_id
        else:
            ranges.append([gap_id, gap_id, stamp])
    return ranges


class FoldPosition(NamedTuple):
    position: int  # every event up to this id is folded (or a gap the checkpoint still awaits)
    updated_at: datetime | None  # the checkpoint's last save: every successful batch, idle ones too


def fold_position(session: Session, name: str = CHECKPOINT) -> FoldPosition:
    """The checkpoint's position without its lock (one primary-key lookup): (0, None) before the first fold."""
    row = session.execute(
        select(FoldCheckpoint.position, FoldCheckpoint.updated_at).where(FoldCheckpoint.name == name)
    ).one_or_none()
    return FoldPosition(row[0] or 0, row[1]) if row else FoldPosition(0, None)


class CheckpointRows(Rows):
    def lock_checkpoint(self, name: str) -> Checkpoint:
        """Read the checkpoint, holding the fold's lock until the transaction ends.

        SQLite: the caller's transaction began with BEGIN IMMEDIATE, so it already holds the write
        lock. MySQL: SELECT ... FOR UPDATE on the checkpoint row; a second fold waits here.
        """
        session = self.session
        query = select(FoldCheckpoint).where(FoldCheckpoint.name == name).with_for_update()
        row = session.execute(query).scalar_one_or_none()
        if row is None:
            statement = (
                insert(FoldCheckpoint).prefix_with("OR IGNORE", dialect="sqlite").prefix_with("IGNORE", dialect="mysql")
            )
            session.execute(statement.values(name=name, position=0, gaps="[]", events_applied=0, donation_high=0))
            row = session.execute(query).scalar_one()
        checkpoint = checkpoint_of(row)
        session.expunge(row)
        return checkpoint

    def read_checkpoint(self, name: str) -> Checkpoint:
        """The checkpoint without taking the lock (read-only jobs)."""
        row = self.session.execute(select(FoldCheckpoint).where(FoldCheckpoint.name == name)).scalar_one_or_none()
        return Checkpoint(name) if row is None else checkpoint_of(row)

    def save_checkpoint(self, checkpoint: Checkpoint, now: datetime) -> None:
        gaps = json.dumps(gap_ranges(checkpoint.gaps))
        self.session.execute(
            update(FoldCheckpoint)
            .where(FoldCheckpoint.name == checkpoint.name)
            .values(
                position=checkpoint.position,
                gaps=gaps,
                events_applied=checkpoint.events_applied,
                donation_high=checkpoint.donation_high,
                rebuild_until=checkpoint.rebuild_until,
                updated_at=now,
            )
        )
