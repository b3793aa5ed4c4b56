"""The sanctioned rewrites of the append-only log (docs/privacy.md): secrets out, phone numbers past their retention.

payment_events refuses UPDATE and DELETE. The one exception (migration 0004) is an UPDATE of `body` and
`msisdn` while privacy_control.rewrite_allowed is 1; `sanctioned_rewrite` sets it and sets it back inside
the transaction that rewrites, so no other transaction ever sees it set. Every such transaction also
records what it did in privacy_rewrites (who, when, how many rows), and holds the fold's lock, so a fold
batch never reads half of a change.

- scrub_secrets: bodies stored before secrets were kept out of storage lose them now (the receiver, the
  spool and `events ingest` store new bodies without them).
- retain: phone numbers past `privacy.msisdn_retention_days` become `hmac:<16 hex>:<last 3>`:
  - in stored bodies, per event, once it was received before the cutoff;
  - in the typed columns the fold compares (payment_events.msisdn, donations.msisdn), per number: a
    number changes everywhere at once, in one transaction, once no event received and no donation
    created after the cutoff still holds it (pipeline.resolution does not compare a retained number, so
    no rewrite changes which callbacks resolve; docs/privacy.md).
  - in the log files: rotated files last written before the cutoff are deleted, live files last written
    before it emptied in place (their writers append, so they go on at the new end).
- erase: one donor's number, now, everywhere (a donor's request; docs/privacy.md).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from loguru import logger
from sqlalchemy import String, bindparam, cast, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from jobs.operator import os_user, sudo_user
from jobs.runs import utcnow
from pipeline.config import Config
from pipeline.db import transaction
from pipeline.errors import ConfigError, InputError
from pipeline.events import decode_json, normalise_msisdn
from pipeline.logs import LOG_FILE_MODE, LOG_FILES, payments
from pipeline.models import Donation, PaymentEvent, PrivacyControl, PrivacyRewrite
from pipeline.privacy import (
    RETAINED_PREFIX,
    BodyRedactor,
    PrivacyKey,
    dump_json,
    load_key,
    numbers_in,
    redactor_for,
    retained_msisdn,
    text_without_numbers,
    without_numbers,
)
from pipeline.store.driver import chunks
from pipeline.store.state import (
    CHECKPOINT,  # the fold's lock is this checkpoint row's
    SqlFoldStore,
)

SCRUB, RETAIN, ERASE = "scrub-secrets", "retain-msisdn", "erase-msisdn"
READ_CHUNK = 2000  # rows read per query while looking for work
WRITE_CHUNK = 500  # rows (or numbers) rewritten per transaction: SQLite's writers wait this long at most
# MySQL can commit auto-increment ids out of order: a row below the highest id seen may still appear.
# Rows this close to the top are looked at again inside each rewrite (docs/fold.md, gap tracking).
RECENT_IDS = 10_000
# bytes a body must contain before it is decoded to look for a secret (pipeline.redact's key words)
_SECRET_HINTS = (b"pass", b"secret", b"token", b"api", b"authorization", b"credential")

Clock = Callable[[], datetime]


# --- the sanctioned rewrite ---------------------------------------------------------------------


def _control(session: Session) -> PrivacyControl:
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
    control = _control(session)
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
class _Fact:
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


def _rewrite_bodies(
    engine: Engine,
    key: PrivacyKey,
    fact: _Fact,
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
            fact.add(session, [item["event_id"] for item in updates])
        changed += len(updates)
    return changed


def _scan(
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


# --- secrets -----------------------------------------------------------------------------------


def _may_hold_secret(body: bytes, redactor: BodyRedactor) -> bool:
    lowered = body.lower()
    return any(hint in lowered for hint in _SECRET_HINTS) or redactor.has_literal(body)


def _scrubbed(redactor: BodyRedactor, body: bytes) -> bytes | None:
    if not _may_hold_secret(body, redactor):
        return None
    return redactor.stored_body(body, decode_json(body))


def scrub_secrets(
    engine: Engine, config: Config, now: datetime, dry_run: bool = False, clock: Clock = utcnow
) -> dict[str, Any]:
    """Replace the secrets of every stored body (pipeline.privacy.BodyRedactor, as the receiver does before it
    stores). Idempotent: a body already without secrets is left as it is. dry_run: count only."""
    redactor = redactor_for(config)
    verify_key(engine, redactor.key)
    counts = {"events_scanned": 0, "events_with_secrets": 0, "events_rewritten": 0}
    candidates = []
    for event_id, body, _ in _scan(engine, ()):
        counts["events_scanned"] += 1
        if _scrubbed(redactor, bytes(body)) is not None:
            candidates.append(event_id)
    counts["events_with_secrets"] = len(candidates)
    if dry_run or not candidates:
        return counts
    fact = _Fact(SCRUB, now, redactor.key, clock=clock)
    counts["events_rewritten"] = _rewrite_bodies(
        engine, redactor.key, fact, candidates, lambda _id, body, _m: _scrubbed(redactor, body)
    )
    fact.announce()
    return counts


# --- phone numbers -----------------------------------------------------------------------------


def _without_numbers(
    key: PrivacyKey, body: bytes, msisdn: str | None, only: frozenset[str] | None = None
) -> bytes | None:
    """The body with its phone numbers (all, or `only` these) replaced; None when it has none to replace.
    A JSON body by its fields (pipeline.privacy.body_number), any other one by the numbers in its text."""
    decoded = decode_json(body)
    if decoded.error is not None or not isinstance(decoded.data, (dict, list)):
        return text_without_numbers(key, body, only)
    known = frozenset(
        number for number in (msisdn, normalise_msisdn(msisdn)) if number and not number.startswith(RETAINED_PREFIX)
    )
    found = numbers_in(decoded.data, known)
    if only is not None:
        found &= only
    if not found:
        return None
    return dump_json(without_numbers(key, decoded.data, known, only=found))


def retain(
    engine: Engine, config: Config, now: datetime, dry_run: bool = False, clock: Clock = utcnow
) -> dict[str, Any]:
    """Apply privacy.msisdn_retention_days at `now`: bodies, typed columns, log files (module doc). Idempotent."""
    key = load_key(config.privacy.key_file)
    verify_key(engine, key)
    cutoff = now - timedelta(days=config.privacy.msisdn_retention_days)
    fact = _Fact(RETAIN, now, key, cutoff=cutoff, clock=clock)
    counts: dict[str, Any] = {"cutoff": cutoff.isoformat()}
    counts.update(_retain_bodies(engine, key, cutoff, fact, dry_run))
    counts.update(_retain_numbers(engine, key, cutoff, fact, dry_run))
    counts.update(sweep_logs(Path(config.logging.dir), cutoff, dry_run))
    stale = stale_spool_files(Path(config.receiver.spool_dir), cutoff)
    if stale:
        logger.warning(
            f"privacy retain: {len(stale)} spool file(s) last written before {cutoff:%Y-%m-%d}, with callbacks never ingested: "
            f"run `azamrecon events ingest-spool` or look at them ({', '.join(path.name for path in stale[:3])})"
        )
    counts["stale_spool_files"] = len(stale)
    fact.announce()
    return counts


def _retain_bodies(engine: Engine, key: PrivacyKey, cutoff: datetime, fact: _Fact, dry_run: bool) -> dict[str, int]:
    """Numbers out of the bodies of events received before the cutoff, from privacy_control's position on.
    The position then moves up to the first event received after the cutoff: what lies below it is done."""
    with transaction(engine) as session:
        start = session.scalar(select(PrivacyControl.bodies_retained_through).where(PrivacyControl.id == 1)) or 0
    candidates = []
    scanned = 0
    for event_id, body, msisdn in _scan(engine, (PaymentEvent.received_at < cutoff,), start=start):
        scanned += 1
        if _without_numbers(key, bytes(body), msisdn) is not None:
            candidates.append(event_id)
    with transaction(engine) as session:
        first_young = session.scalar(
            select(func.min(PaymentEvent.id)).where(PaymentEvent.id > start, PaymentEvent.received_at >= cutoff)
        )
        top = session.scalar(select(func.max(PaymentEvent.id))) or 0
    position = top if first_young is None else first_young - 1
    rewritten = 0
    if not dry_run:
        if candidates:
            rewritten = _rewrite_bodies(
                engine, key, fact, candidates, lambda _id, body, msisdn: _without_numbers(key, body, msisdn)
            )
        if position > start:
            with transaction(engine, immediate=True) as session:
                _control(session)
                session.execute(
                    update(PrivacyControl)
                    .where(PrivacyControl.id == 1, PrivacyControl.bodies_retained_through < position)
                    .values(bodies_retained_through=position)
                )
    return {"bodies_scanned": scanned, "bodies_with_numbers": len(candidates), "bodies_rewritten": rewritten}


def _young_numbers(session: Session, cutoff: datetime) -> set[str]:
    """Every number an event received, or a donation created, at or after the cutoff still holds."""
    young = set(
        session.scalars(
            select(PaymentEvent.msisdn)
            .where(PaymentEvent.received_at >= cutoff, PaymentEvent.msisdn.is_not(None))
            .distinct()
        )
    )
    young.update(
        session.scalars(
            select(Donation.msisdn).where(Donation.created_at >= cutoff, Donation.msisdn.is_not(None)).distinct()
        )
    )
    return young


def _retain_numbers(engine: Engine, key: PrivacyKey, cutoff: datetime, fact: _Fact, dry_run: bool) -> dict[str, int]:
    clear = (PaymentEvent.msisdn.is_not(None), PaymentEvent.msisdn.not_like(RETAINED_PREFIX + "%"))
    with transaction(engine, isolation="REPEATABLE READ") as session:  # one snapshot for the whole picture
        young = _young_numbers(session, cutoff)
        event_top = session.scalar(select(func.max(PaymentEvent.id))) or 0
        donation_top = session.scalar(select(func.max(Donation.id))) or 0
        donations = session.execute(
            select(Donation.id, Donation.msisdn).where(
                Donation.created_at < cutoff,
                Donation.msisdn.is_not(None),
                Donation.msisdn.not_like(RETAINED_PREFIX + "%"),
            )
        ).all()
    events = [
        (event_id, msisdn)
        for event_id, msisdn in _scan(
            engine, (PaymentEvent.received_at < cutoff, *clear), columns=(PaymentEvent.id, PaymentEvent.msisdn)
        )
    ]
    places = _places(events, donations, exclude=young)
    kept = len({number for _, number in events} | {number for _, number in donations}) - len(places)
    counts = {
        "numbers_retired": 0,
        "numbers_kept_in_use": kept,
        "msisdn_events_rewritten": 0,
        "msisdn_donations_rewritten": 0,
    }
    if dry_run:
        counts["numbers_retired"] = len(places)
        return counts
    _retire(engine, key, fact, places, counts, recent=(event_top, donation_top, cutoff))
    return counts


def _places(
    events: Iterable[tuple[int, str]], donations: Iterable[tuple[int, str]], exclude: set[str] = frozenset()
) -> dict[str, tuple[list[int], list[int]]]:
    """number -> (event ids, donation ids) holding it, numbers in `exclude` left out."""
    places: dict[str, tuple[list[int], list[int]]] = {}
    for event_id, number in events:
        if number not in exclude:
            places.setdefault(number, ([], []))[0].append(event_id)
    for donation_id, number in donations:
        if number not in exclude:
            places.setdefault(number, ([], []))[1].append(donation_id)
    return places


def _retire(
    engine: Engine,
    key: PrivacyKey,
    fact: _Fact,
    places: dict[str, tuple[list[int], list[int]]],
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
            fact.add(session, [item["event_id"] for item in event_updates], donations_done)
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


# --- one donor ---------------------------------------------------------------------------------


def donor_numbers(key: PrivacyKey, msisdn: str) -> tuple[str, str]:
    """(the number as stored in clear, as stored once retained) for a number a donor gives; InputError
    when it is not a Tanzanian mobile number."""
    normalised = normalise_msisdn(msisdn)
    if normalised is None:
        raise InputError(f"not a Tanzanian mobile number (0XXXXXXXXX, 255XXXXXXXXX or +255XXXXXXXXX): {msisdn!r}")
    return normalised, retained_msisdn(key, normalised)


def _body_patterns(clear: str, hashed: str) -> list[str]:
    """LIKE patterns of a body that may hold the number: its last 9 digits are in every written form."""
    return [f"%{clear[-9:]}%", f"%{hashed}%"]


def _body_like(pattern: str):
    """body LIKE pattern, the body read as text (SQLite's LIKE never matches a BLOB as it is)."""
    return cast(PaymentEvent.body, String()).like(pattern)


def find_donor(engine: Engine, config: Config, msisdn: str) -> dict[str, list[dict]]:
    """A donor's data (docs/privacy.md, "A donor asks"): donations and events that hold their number, in
    clear or retained. Reads only; never creates the key (the number's hash needs the installation's)."""
    key = load_key(config.privacy.key_file, create=False)
    verify_key(engine, key)
    clear, hashed = donor_numbers(key, msisdn)
    with transaction(engine, isolation="REPEATABLE READ") as session:
        donations = session.execute(
            select(
                Donation.id,
                Donation.created_at,
                Donation.status,
                Donation.amount,
                Donation.currency,
                Donation.msisdn,
                Donation.provider,
            )
            .where(Donation.msisdn.in_((clear, hashed)))
            .order_by(Donation.id)
        ).all()
        patterns = _body_patterns(clear, hashed)
        events = session.execute(
            select(
                PaymentEvent.id,
                PaymentEvent.received_at,
                PaymentEvent.source,
                PaymentEvent.status,
                PaymentEvent.amount,
                PaymentEvent.msisdn,
            )
            .where(PaymentEvent.msisdn.in_((clear, hashed)) | _body_like(patterns[0]) | _body_like(patterns[1]))
            .order_by(PaymentEvent.id)
        ).all()
    return {
        "donations": [dict(row._mapping) for row in donations],
        "events": [dict(row._mapping) for row in events],
    }


def erase_donor(
    engine: Engine, config: Config, msisdn: str, now: datetime, dry_run: bool = False, clock: Clock = utcnow
) -> dict[str, Any]:
    """Replace one donor's number now, everywhere in the database, as retention would later. Refused while a
    donation with it is still open (PENDING or REVIEW): its callback would no longer match it."""
    key = load_key(config.privacy.key_file, create=False)
    verify_key(engine, key)
    clear, _ = donor_numbers(key, msisdn)
    with transaction(engine) as session:
        donations = session.execute(select(Donation.id, Donation.status).where(Donation.msisdn == clear)).all()
        events = [
            event_id for (event_id,) in session.execute(select(PaymentEvent.id).where(PaymentEvent.msisdn == clear))
        ]
    open_ones = [donation_id for donation_id, status in donations if status in ("PENDING", "REVIEW")]
    if open_ones:
        raise InputError(
            f"donation(s) {', '.join(map(str, open_ones))} with this number are still open: erase it once they are settled"
        )
    only = frozenset({clear})
    bodies = [
        event_id
        for event_id, body, msisdn_value in _scan(engine, (_body_like(_body_patterns(clear, "")[0]),))
        if _without_numbers(key, bytes(body), msisdn_value, only) is not None
    ]
    counts = {
        "donations": len(donations),
        "events": len(events),
        "bodies": len(bodies),
        "msisdn_events_rewritten": 0,
        "msisdn_donations_rewritten": 0,
        "numbers_retired": 0,
        "bodies_rewritten": 0,
    }
    if dry_run:
        return counts
    fact = _Fact(ERASE, now, key, clock=clock, detail={"number_hash": retained_msisdn(key, clear)})
    _retire(engine, key, fact, {clear: (events, [donation_id for donation_id, _ in donations])}, counts, recent=None)
    counts["bodies_rewritten"] = _rewrite_bodies(
        engine, key, fact, bodies, lambda _id, body, msisdn_value: _without_numbers(key, body, msisdn_value, only)
    )
    fact.announce()
    return counts


# --- files -------------------------------------------------------------------------------------


def _rotated(name: str) -> bool:
    """A rotated log file: loguru renames payments.log to payments.<time>[.n].log."""
    for live in LOG_FILES:
        base = live[: -len(".log")]
        if name != live and name.startswith(base + ".") and ".log" in name[len(base) :]:
            return True
    return False


def sweep_logs(directory: Path, cutoff: datetime, dry_run: bool = False) -> dict[str, int]:
    """Log files past the retention: a rotated one last written before the cutoff is deleted; a live one
    (payments.log, errors.log, app.log) last written before it holds only such lines and is emptied in
    place. Lines rotate by UTC day (pipeline.logs.SizeRotation), so a file's age is its newest line's.
    What stays is narrowed to 0640 (files an older version left 0644)."""
    counts = {"log_files_deleted": 0, "log_files_emptied": 0}
    if not directory.is_dir():
        return counts
    limit = cutoff.timestamp()
    for path in sorted(directory.iterdir()):
        live = path.name in LOG_FILES
        if not path.is_file() or not (live or _rotated(path.name)):
            continue
        try:
            status = path.stat()
            if status.st_mtime < limit:
                if live and status.st_size:
                    counts["log_files_emptied"] += 1
                    if not dry_run:
                        os.truncate(path, 0)
                    continue
                if not live:
                    counts["log_files_deleted"] += 1
                    if not dry_run:
                        path.unlink()
                    continue
            if not dry_run and status.st_mode & 0o777 & ~LOG_FILE_MODE:
                os.chmod(path, status.st_mode & LOG_FILE_MODE)
        except FileNotFoundError:  # loguru's own retention got there first
            continue
        except OSError as exc:
            logger.warning(f"privacy retain: cannot clean {path}: {exc.strerror or exc}")
    return counts


def stale_spool_files(directory: Path, cutoff: datetime) -> list[Path]:
    """Spool files last written before the cutoff: never deleted here (nothing received is thrown away)."""
    stale = []
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            with contextlib.suppress(FileNotFoundError):  # replayed and deleted meanwhile
                if path.is_file() and path.stat().st_mtime < cutoff.timestamp():
                    stale.append(path)
    return stale
