"""The append-only log: building rows, appending them (in groups), and reading them back."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from json.encoder import encode_basestring
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from pipeline.errors import StoreError
from pipeline.events import EventFields
from pipeline.fold import AUTH_VALUES, SIGNED, Source
from pipeline.models import Money, PaymentEvent, UTCDateTime
from pipeline.resolution import (
    DEFAULT_FORMAT,
    DonationFacts,
    DonationIndex,
    Key,
    ReferenceFormat,
    Resolution,
    decide,
    lookup_keys,
    wanted_values,
)
from pipeline.store.driver import Driver, chunks

SOURCES = tuple(Source)
# headers worth keeping with the raw body; everything else (cookies, auth) is dropped
KEPT_HEADERS = ("content-type", "content-length", "user-agent", "x-forwarded-for", "x-real-ip", "x-request-id", "host")
_KEPT_IN_ORDER = tuple((name, encode_basestring(name)) for name in sorted(KEPT_HEADERS))


# each kept value is cut to this many characters, plus a marker with its size: seven values, even all
# escaped (6 bytes a character), fit MySQL's 64 KiB TEXT column; a 70,000-byte User-Agent overflowed it
HEADER_VALUE_CHARS = 512


def _capped(value: str) -> str:
    if len(value) <= HEADER_VALUE_CHARS:
        return value
    return f"{value[:HEADER_VALUE_CHARS]}...[truncated: {len(value)} bytes]"  # headers are decoded latin-1: 1 byte each


def select_headers(headers: Mapping[str, str]) -> str:
    """The kept headers as json.dumps(kept, ensure_ascii=False, sort_keys=True) writes them, built from
    json's own C string encoder: dumps' per-call encoder set-up is a cost on every callback. Each value
    is capped at HEADER_VALUE_CHARS characters, with a marker naming its full size."""
    return (
        "{"
        + ", ".join(
            f"{key}: {encode_basestring(_capped(headers[name]))}" for name, key in _KEPT_IN_ORDER if name in headers
        )
        + "}"
    )


def event_row(
    *,
    source: str,
    body: bytes,
    received_at: datetime,
    auth: str,
    fields: EventFields | None = None,
    content_type: str | None = None,
    remote_addr: str | None = None,
    headers: str | None = None,
    donation_id: int | None = None,
    dedupe_key: str | None = None,
    stored_body: bytes | None = None,
    body_sha256: str | None = None,
) -> dict[str, Any]:
    """One payment_events row as a dict for executemany. `fields` are the typed columns (pipeline.events).

    `stored_body`: what is stored instead of `body` when that held a secret (pipeline.privacy.BodyRedactor);
    body_sha256 stays the hash of `body`, the bytes as received, so a body can still be matched against
    the sender's copy. `body_sha256` given: `body` is already the stored form (a spool line) and this is
    the hash of the bytes received."""
    if source not in SOURCES:
        raise ValueError(f"unknown event source {source!r}")
    if auth not in AUTH_VALUES:
        raise ValueError(f"unknown auth value {auth!r}")
    row = {
        "received_at": received_at,
        "source": source,
        "body": bytes(body if stored_body is None else stored_body),
        "body_sha256": body_sha256 or hashlib.sha256(body).hexdigest(),
        "content_type": (content_type or None) and content_type[:255],
        "remote_addr": (remote_addr or None) and remote_addr[:64],
        "headers": headers,
        "donation_id": donation_id,
        "auth": auth,
        "dedupe_key": dedupe_key,
    }
    row.update((fields or EventFields()).column_values())
    return row


_EVENTS = PaymentEvent.__table__
_TIME_COLUMNS = frozenset(column.key for column in _EVENTS.columns if isinstance(column.type, UTCDateTime))
_MONEY_COLUMNS = frozenset(column.key for column in _EVENTS.columns if isinstance(column.type, Money))


def append_events(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """Append rows with executemany, in their order, and return how many were inserted. Rows whose
    dedupe_key is already in the log are skipped (INSERT IGNORE), and the count comes from the database:
    two imports of one file may race, and each must report what it added.

    Everything goes through the raw driver on the session's connection: building and compiling a Core
    insert per group commit was a measurable share of the receiver's CPU (bench/RESULTS.md).

    A value the column cannot store (a naive datetime, a float amount, a key that names no column) raises
    StoreError, as Core's own conversion failures do, so that the receiver's writer retries the rows of
    a group one by one and only the bad one is spooled."""
    if not rows:
        return 0
    raw = Driver(session.connection())
    ignore = "INSERT OR IGNORE INTO" if raw.sqlite else "INSERT IGNORE INTO"
    inserted = 0
    start = 0
    for end in range(1, len(rows) + 1):  # one executemany per run of rows with the same keys
        if end == len(rows) or rows[end].keys() != rows[start].keys():
            sql, values = _plain_insert(raw, rows[start:end])
            if rows[start].get("dedupe_key") is not None:
                inserted += raw.many(sql.replace("INSERT INTO", ignore, 1), values)
            else:
                raw.many(sql, values)
                inserted += end - start
            start = end
    return inserted


def _plain_insert(raw: Driver, rows: Sequence[dict[str, Any]]) -> tuple[str, list[list[Any]]]:
    """(INSERT statement, values in storage form) for rows that share their keys."""
    columns = tuple(rows[0])
    unknown = [column for column in columns if column not in _EVENTS.columns]
    if unknown:
        raise StoreError(f"database error: payment_events has no column {', '.join(unknown)}")
    times = [i for i, column in enumerate(columns) if column in _TIME_COLUMNS]
    money = [i for i, column in enumerate(columns) if column in _MONEY_COLUMNS]
    values_of = itemgetter(*columns)
    bind_when, bind_money = raw.bind_when, raw.bind_money
    values = []
    for row in rows:
        value = list(values_of(row)) if len(columns) > 1 else [values_of(row)]
        try:
            for i in times:
                value[i] = bind_when(value[i])
            for i in money:
                value[i] = bind_money(value[i])
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise StoreError(f"database error: {type(exc).__name__}: {exc}") from exc
        values.append(value)
    return f"INSERT INTO payment_events ({', '.join(columns)}) VALUES {raw.marks(len(columns))}", values


def append_event(session: Session, row: dict[str, Any]) -> int | None:
    """Append one row and return its id (None when its dedupe_key was already present)."""
    if row.get("dedupe_key") is not None:
        existing = session.scalar(select(PaymentEvent.id).where(PaymentEvent.dedupe_key == row["dedupe_key"]))
        if existing is not None:
            return None
    return session.execute(insert(PaymentEvent).values(**row)).inserted_primary_key[0]


class Claim(NamedTuple):
    """What a callback states about its donation, and its lookup keys (pipeline.resolution)."""

    event: EventFields
    keys: tuple[Key, ...]

    @classmethod
    def of(cls, fields: EventFields, references: ReferenceFormat = DEFAULT_FORMAT, auth: str | None = None) -> Claim:
        return cls(fields, lookup_keys(fields, references, signed=auth == SIGNED))


def resolve_claims(session: Session, claims: Sequence[Claim], more_donations=None) -> list[Resolution]:
    """Each claim's Resolution, decided by pipeline.resolution.decide as the fold decides it. One query for
    the whole group (one per IN_CHUNK keys), on the raw driver: the Core query's compilation cost as much
    as the insert. `more_donations(session, wanted)`: where else donations are (portal mode: the portal's
    rows not recorded yet, pipeline.store.portal.PortalLookup), asked only when some claim found none."""
    by_column = wanted_values(key for claim in claims for key in claim.keys)
    wanted = [(column, value) for column, values in by_column.items() for value in values]
    index = DonationIndex()
    if wanted:
        raw = Driver(session.connection())
        for part in chunks(wanted):
            by_column: dict[str, list] = {}
            for column, value in part:
                by_column.setdefault(column, []).append(value)
            where = " OR ".join(f"{column} IN {raw.marks(len(values))}" for column, values in by_column.items())
            params = [value for values in by_column.values() for value in values]
            for row in raw.fetch(
                f"SELECT id, external_reference, transaction_id, msisdn, provider FROM donations WHERE {where}", params
            ):
                index.add(DonationFacts(*row))
    decisions = [decide(claim.event, claim.keys, index) for claim in claims]
    if more_donations is not None and wanted and any(decision.donation_id is None for decision in decisions):
        for facts in more_donations(session, by_column):
            if facts.id not in index.facts:
                index.add(facts)
        decisions = [decide(claim.event, claim.keys, index) for claim in claims]
    return decisions


def get_event(session: Session, event_id: int) -> PaymentEvent | None:
    return session.get(PaymentEvent, event_id)


def list_events(
    session: Session,
    *,
    limit: int = 50,
    before_id: int | None = None,
    source: str | None = None,
    donation_id: int | None = None,
) -> list[PaymentEvent]:
    """Newest first."""
    query = select(PaymentEvent).order_by(PaymentEvent.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(PaymentEvent.id < before_id)
    if source is not None:
        query = query.where(PaymentEvent.source == source)
    if donation_id is not None:
        query = query.where(PaymentEvent.donation_id == donation_id)
    return list(session.scalars(query))


def already_appended(session: Session, rows: Sequence[dict[str, Any]]) -> set[tuple[str, datetime]]:
    """(body_sha256, received_at) of those rows that are in the log already.

    A writer that lost its connection during COMMIT cannot know whether the commit happened. The same
    request (same body, same arrival instant to the microsecond) found in the log means it did; AzamPay's
    own retries arrive at other instants and are kept."""
    shas = sorted({row["body_sha256"] for row in rows})
    if not shas:
        return set()
    query = select(PaymentEvent.body_sha256, PaymentEvent.received_at).where(PaymentEvent.body_sha256.in_(shas))
    return {(sha, received_at) for sha, received_at in session.execute(query)}
