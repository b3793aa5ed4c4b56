"""The append-only log: building rows, appending them (in groups), and reading them back."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import insert, or_, select
from sqlalchemy.orm import Session

from pipeline.events import EventFields
from pipeline.fold import hint_id
from pipeline.models import Donation, PaymentEvent

SOURCES = ("callback", "poll", "checkout", "operator", "import")
AUTH_VALUES = ("verified", "unverified", "failed", "n/a")
# headers worth keeping with the raw body; everything else (cookies, auth) is dropped
KEPT_HEADERS = ("content-type", "content-length", "user-agent", "x-forwarded-for", "x-real-ip", "x-request-id", "host")


def select_headers(headers: Mapping[str, str]) -> str:
    kept = {name: headers[name] for name in KEPT_HEADERS if name in headers}
    return json.dumps(kept, ensure_ascii=False, sort_keys=True)


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
) -> dict[str, Any]:
    """One payment_events row as a dict for executemany. `fields` are the typed columns (pipeline.events)."""
    if source not in SOURCES:
        raise ValueError(f"unknown event source {source!r}")
    if auth not in AUTH_VALUES:
        raise ValueError(f"unknown auth value {auth!r}")
    row = {
        "received_at": received_at,
        "source": source,
        "body": bytes(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
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
_INSERT = insert(_EVENTS)
_INSERT_IGNORE = insert(_EVENTS).prefix_with("OR IGNORE", dialect="sqlite").prefix_with("IGNORE", dialect="mysql")


def append_events(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Append rows in one statement (executemany). Rows whose dedupe_key is already in the log are skipped.

    A Core insert on the session's connection: the rows are plain dicts and nothing is read back, so the
    ORM's bulk-insert bookkeeping would only cost time (it was most of the receiver writer's own CPU)."""
    if not rows:
        return
    plain = [row for row in rows if row.get("dedupe_key") is None]
    keyed = [row for row in rows if row.get("dedupe_key") is not None]
    connection = session.connection()
    if plain:
        connection.execute(_INSERT, plain)
    if keyed:
        connection.execute(_INSERT_IGNORE, keyed)


def append_event(session: Session, row: dict[str, Any]) -> int | None:
    """Append one row and return its id (None when its dedupe_key was already present)."""
    if row.get("dedupe_key") is not None:
        existing = session.scalar(select(PaymentEvent.id).where(PaymentEvent.dedupe_key == row["dedupe_key"]))
        if existing is not None:
            return None
    return session.execute(insert(PaymentEvent).values(**row)).inserted_primary_key[0]


@dataclass(frozen=True, slots=True)
class ReferenceKeys:
    """The ways an event can name a donation, in DESIGN §3's resolution order."""

    external_refs: tuple[str, ...]
    donation_id: int | None
    transaction_ref: str | None

    @classmethod
    def of(cls, fields: EventFields) -> "ReferenceKeys":
        refs = tuple(ref for ref in (fields.utilityref, fields.externalreference) if ref)
        return cls(refs, hint_id(fields.donation_hint), fields.transaction_ref)


_DONATIONS = Donation.__table__


def known_references(session: Session, keys: Iterable[ReferenceKeys]) -> list[bool]:
    """For each key set, whether some donation matches it. One query for the whole group."""
    keys = list(keys)
    refs = {ref for key in keys for ref in key.external_refs}
    ids = {key.donation_id for key in keys if key.donation_id is not None}
    transaction_refs = {key.transaction_ref for key in keys if key.transaction_ref}
    if not (refs or ids or transaction_refs):
        return [False] * len(keys)
    donations = _DONATIONS.c
    conditions = []
    if refs:
        conditions.append(donations.external_reference.in_(refs))
    if ids:
        conditions.append(donations.id.in_(ids))
    if transaction_refs:
        conditions.append(donations.transaction_id.in_(transaction_refs))
    found_refs, found_ids, found_transactions = set(), set(), set()
    # Core, on the session's connection: three plain columns, no ORM entities
    for donation_id, external_reference, transaction_id in session.connection().execute(
        select(donations.id, donations.external_reference, donations.transaction_id).where(or_(*conditions))
    ):
        found_ids.add(donation_id)
        found_refs.add(external_reference)
        found_transactions.add(transaction_id)
    return [
        any(ref in found_refs for ref in key.external_refs)
        or (key.donation_id in found_ids)
        or (key.transaction_ref is not None and key.transaction_ref in found_transactions)
        for key in keys
    ]


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
