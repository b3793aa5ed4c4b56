"""The sanctioned rewrite of the append-only log (docs/privacy.md), shared by jobs/privacy.py and jobs/retain.py.

payment_events refuses UPDATE and DELETE. The one exception (migration 0004) is an UPDATE of `body` and
`msisdn` while privacy_control.rewrite_allowed is 1; `sanctioned_rewrite` sets it and sets it back inside
the transaction that rewrites, so no other transaction ever sees it set. Every such transaction also
records what it did in privacy_rewrites (who, when, how many rows), and holds the fold's lock, so a fold
batch never reads half of a change.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from jobs.operator import os_user, sudo_user
from jobs.runs import utcnow
from pipeline.db import transaction
from pipeline.errors import ConfigError
from pipeline.logs import payments
from pipeline.models import Donation, PaymentEvent, PrivacyControl, PrivacyRewrite
from pipeline.privacy import PrivacyKey, retained_msisdn
from pipeline.rewrites import Places
from pipeline.store.checkpoint import CHECKPOINT  # the fold's lock is this checkpoint row's
from pipeline.store.driver import chunks
from pipeline.store.state import SqlFoldStore

SCRUB, RETAIN, ERASE = "scrub-secrets", "retain-msisdn", "erase-msisdn"
READ_CHUNK = 2000  # rows read per query while looking for work
WRITE_CHUNK = 500  # rows (or numbers) rewritten per transaction: SQLite's writers wait this long at most
# MySQL can commit auto-increment ids out of order: a row below the highest id seen may still appear.
# Rows this close to the top are looked at again inside each rewrite (docs/fold.md, gap tracking).
RECENT_IDS = 10_000

Clock = Callable[[], datetime]


def control_row(session: Session) -> PrivacyControl:
    """The privacy_control row, created when missing (a truncated table reads as 'not allowed')."""
    row = session.execute(select(PrivacyControl).where(PrivacyControl.id == 1).with_for_update()).scalar_one_or_none()
    if row is None:
        session.execute(
            insert(PrivacyControl).prefix_with("OR IGNORE", dialect="sqlite").prefix_with("IGNORE", dialect="mysql"),
            {"id": 1, "rewrite_allowed": 0, "bodies_retained_through": 0},
        )
        row = session.execute(select(PrivacyControl).where(PrivacyControl.id == 1).with_for_update()).scalar_one()
    return row


def _wrong_key(key: PrivacyKey, recorded: str) -> ConfigError:
    return ConfigError(
        f"invalid config value for privacy.key_file: {key.path} is not the key this database was hashed with "
        f"(fingerprint {key.fingerprint}, the database's {recorded}); restore that key file"
    )


def check_key(session: Session, key: PrivacyKey) -> None:
    """The stored hashes were made with one key: refuse another (a lost or replaced key file would hash the
    same number differently, and equal numbers would stop being equal). The first rewrite records it."""
    control = control_row(session)
    if control.key_fingerprint is None:
        session.execute(update(PrivacyControl).where(PrivacyControl.id == 1).values(key_fingerprint=key.fingerprint))
    elif control.key_fingerprint != key.fingerprint:
        raise _wrong_key(key, control.key_fingerprint)


def verify_key(engine: Engine, key: PrivacyKey) -> None:
    """check_key without writing or locking, before a command reads or plans anything with the key."""
    with transaction(engine) as session:
        recorded = session.scalar(select(PrivacyControl.key_fingerprint).where(PrivacyControl.id == 1))
    if recorded is not None and recorded != key.fingerprint:
        raise _wrong_key(key, recorded)


@contextlib.contextmanager
def sanctioned_rewrite(session: Session, key: PrivacyKey) -> Iterator[None]:
    """Inside the caller's transaction: take the fold's lock, check the key, lift the payment_events update
    guard (body and msisdn only; migration 0004), and put it back before the caller commits. On an error
    the caller's transaction rolls back, the lifted guard with it: the flag is never committed as 1."""
    SqlFoldStore(session).lock_checkpoint(CHECKPOINT)
    check_key(session, key)
    guard = update(PrivacyControl).where(PrivacyControl.id == 1)
    session.execute(guard.values(rewrite_allowed=1))
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):  # also when a caller would catch the error and commit anyway
            session.execute(guard.values(rewrite_allowed=0))
        raise
    session.execute(guard.values(rewrite_allowed=0))


@dataclass
class RewriteRecord:
    """One privacy_rewrites row per run: inserted by the first transaction that rewrites, brought up to date
    by each later one, always in the transaction whose rows it counts."""

    operation: str
    now: datetime
    key: PrivacyKey
    cutoff: datetime | None = None
    clock: Clock = utcnow
    detail: dict = field(default_factory=dict)
    row_id: int | None = None
    events: int = 0
    donations: int = 0
    first: int | None = None
    last: int | None = None

    def add(self, session: Session, event_ids: Sequence[int], donations: int = 0) -> None:
        if not event_ids and not donations:
            return
        self.events += len(event_ids)
        self.donations += donations
        if event_ids:
            self.first = min(event_ids) if self.first is None else min(self.first, *event_ids)
            self.last = max(event_ids) if self.last is None else max(self.last, *event_ids)
        values = {
            "finished_at": max(self.clock(), self.now),
            "events_rewritten": self.events,
            "donations_rewritten": self.donations,
            "first_event_id": self.first,
            "last_event_id": self.last,
            "detail": json.dumps(self.detail, sort_keys=True),
        }
        if self.row_id is None:
            self.row_id = session.execute(
                insert(PrivacyRewrite).values(
                    operation=self.operation,
                    started_at=self.now,
                    os_user=os_user()[:128],
                    sudo_user=(sudo_user() or None) and sudo_user()[:128],
                    key_fingerprint=self.key.fingerprint,
                    cutoff=self.cutoff,
                    **values,
                )
            ).inserted_primary_key[0]
        else:
            session.execute(update(PrivacyRewrite).where(PrivacyRewrite.id == self.row_id).values(**values))

    def announce(self) -> None:
        if self.row_id is not None:
            payments.info(
                f"Log rewritten ({self.operation}, privacy_rewrites {self.row_id}): {self.events} event(s), {self.donations} donation(s)"
                + (f", cutoff {self.cutoff:%Y-%m-%d %H:%M:%S} UTC" if self.cutoff else "")
            )


# Core statements, run with executemany on the session's connection; `old` in the WHERE: a row some other
# rewrite changed meanwhile is left alone
_EVENTS, _DONATIONS = PaymentEvent.__table__, Donation.__table__
_SET_BODY = update(_EVENTS).where(_EVENTS.c.id == bindparam("event_id")).values(body=bindparam("new_body"))
_SET_EVENT_MSISDN = (
    update(_EVENTS)
    .where(_EVENTS.c.id == bindparam("event_id"), _EVENTS.c.msisdn == bindparam("old"))
    .values(msisdn=bindparam("new"))
)
_SET_DONATION_MSISDN = (
    update(_DONATIONS)
    .where(_DONATIONS.c.id == bindparam("donation_id"), _DONATIONS.c.msisdn == bindparam("old"))
    .values(msisdn=bindparam("new"))
)


def rewrite_bodies(
    engine: Engine,
    key: PrivacyKey,
    record: RewriteRecord,
    candidates: Sequence[int],
    new_body: Callable[[int, bytes, str | None], bytes | None],
) -> int:
    """Rewrite the bodies of `candidates` (event ids) with new_body(id, body, msisdn) (None: leave it), in
    transactions of WRITE_CHUNK, each reading the bodies again under the lock (a concurrent rewrite may
    have changed them since they were looked at). Returns the number of bodies changed."""
    changed = 0
    for part in chunks(list(candidates), WRITE_CHUNK):
        with transaction(engine, immediate=True) as session:
            with sanctioned_rewrite(session, key):
                rows = session.execute(
                    select(PaymentEvent.id, PaymentEvent.body, PaymentEvent.msisdn).where(PaymentEvent.id.in_(part))
                ).all()
                updates = []
                for event_id, body, msisdn in rows:
                    body = bytes(body)
                    replaced = new_body(event_id, body, msisdn)
                    if replaced is not None and replaced != body:
                        updates.append({"event_id": event_id, "new_body": replaced})
                if updates:
                    session.connection().execute(_SET_BODY, updates)
            record.add(session, [item["event_id"] for item in updates])
        changed += len(updates)
    return changed


def scan_events(
    engine: Engine, where, columns=(PaymentEvent.id, PaymentEvent.body, PaymentEvent.msisdn), start: int = 0
) -> Iterator[tuple]:
    """Rows of payment_events matching `where`, in id order, READ_CHUNK per query (never the whole log in memory)."""
    position = start
    while True:
        with transaction(engine) as session:
            rows = session.execute(
                select(*columns).where(PaymentEvent.id > position, *where).order_by(PaymentEvent.id).limit(READ_CHUNK)
            ).all()
        if not rows:
            return
        yield from rows
        position = rows[-1][0]


def retire_numbers(
    engine: Engine,
    key: PrivacyKey,
    record: RewriteRecord,
    places: Places,
    counts: dict,
    recent: tuple[int, int, datetime] | None,
) -> None:
    """Replace each number in its typed columns, all its rows in one transaction. `recent` (the highest event
    and donation ids when `places` was read, and the cutoff): a number a row near the top holds since, from
    after the cutoff, is left for a later run (it is in use again); erase passes None (it replaces a number
    whatever its use)."""
    numbers = sorted(places)
    for part in chunks(numbers, WRITE_CHUNK):
        with transaction(engine, immediate=True) as session:
            with sanctioned_rewrite(session, key):
                in_use = _appeared_since(session, part, recent) if recent else set()
                event_updates, donation_updates = [], []
                for number in part:
                    if number in in_use:
                        continue
                    hashed = retained_msisdn(key, number)
                    event_ids, donation_ids = places[number]
                    event_updates += [{"event_id": event_id, "old": number, "new": hashed} for event_id in event_ids]
                    donation_updates += [
                        {"donation_id": donation_id, "old": number, "new": hashed} for donation_id in donation_ids
                    ]
                connection = session.connection()
                events_done = connection.execute(_SET_EVENT_MSISDN, event_updates).rowcount if event_updates else 0
                donations_done = (
                    connection.execute(_SET_DONATION_MSISDN, donation_updates).rowcount if donation_updates else 0
                )
            record.add(session, [item["event_id"] for item in event_updates], donations_done)
        counts["numbers_retired"] += len(part) - len(in_use)
        counts["msisdn_events_rewritten"] += events_done
        counts["msisdn_donations_rewritten"] += donations_done


def _appeared_since(session: Session, numbers: Sequence[str], recent: tuple[int, int, datetime]) -> set[str]:
    event_top, donation_top, cutoff = recent
    found = set(
        session.scalars(
            select(PaymentEvent.msisdn).where(
                PaymentEvent.id > event_top - RECENT_IDS,
                PaymentEvent.msisdn.in_(numbers),
                PaymentEvent.received_at >= cutoff,
            )
        )
    )
    found.update(
        session.scalars(
            select(Donation.msisdn).where(
                Donation.id > donation_top - RECENT_IDS, Donation.msisdn.in_(numbers), Donation.created_at >= cutoff
            )
        )
    )
    return found
