"""The privacy jobs on the stored log (docs/privacy.md), each through the sanctioned rewrite (jobs/rewrite.py):

- scrub_secrets: bodies stored before secrets were kept out of storage lose them now (the receiver, the
  spool and `events ingest` store new bodies without them).
- find_donor / erase_donor: one donor's data; their number, now, everywhere (a donor's request).

Retention of numbers past `privacy.msisdn_retention_days` is jobs/retain.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String, cast, select
from sqlalchemy.engine import Engine

from jobs.rewrite import ERASE, SCRUB, Clock, RewriteRecord, retire_numbers, rewrite_bodies, scan_events, verify_key
from jobs.runs import utcnow
from pipeline.config import Config
from pipeline.db import transaction
from pipeline.errors import InputError
from pipeline.fold import Status
from pipeline.models import Donation, PaymentEvent
from pipeline.privacy import load_key, redactor_for, retained_msisdn
from pipeline.rewrites import body_patterns, body_without_numbers, donor_numbers, scrubbed


def scrub_secrets(
    engine: Engine, config: Config, now: datetime, dry_run: bool = False, clock: Clock = utcnow
) -> dict[str, Any]:
    """Replace the secrets of every stored body (pipeline.privacy.BodyRedactor, as the receiver does before it
    stores). Idempotent: a body already without secrets is left as it is. dry_run: count only."""
    redactor = redactor_for(config)
    verify_key(engine, redactor.key)
    counts = {"events_scanned": 0, "events_with_secrets": 0, "events_rewritten": 0}
    candidates = []
    for event_id, body, _ in scan_events(engine, ()):
        counts["events_scanned"] += 1
        if scrubbed(redactor, bytes(body)) is not None:
            candidates.append(event_id)
    counts["events_with_secrets"] = len(candidates)
    if dry_run or not candidates:
        return counts
    record = RewriteRecord(SCRUB, now, redactor.key, clock=clock)
    counts["events_rewritten"] = rewrite_bodies(
        engine, redactor.key, record, candidates, lambda _id, body, _m: scrubbed(redactor, body)
    )
    record.announce()
    return counts


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
        patterns = body_patterns(clear, hashed)
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
    open_ones = [donation_id for donation_id, status in donations if status in (Status.PENDING, Status.REVIEW)]
    if open_ones:
        raise InputError(
            f"donation(s) {', '.join(map(str, open_ones))} with this number are still open: erase it once they are settled"
        )
    only = frozenset({clear})
    bodies = [
        event_id
        for event_id, body, msisdn_value in scan_events(engine, (_body_like(body_patterns(clear, "")[0]),))
        if body_without_numbers(key, bytes(body), msisdn_value, only) is not None
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
    record = RewriteRecord(ERASE, now, key, clock=clock, detail={"number_hash": retained_msisdn(key, clear)})
    retire_numbers(
        engine, key, record, {clear: (events, [donation_id for donation_id, _ in donations])}, counts, recent=None
    )
    counts["bodies_rewritten"] = rewrite_bodies(
        engine, key, record, bodies, lambda _id, body, msisdn_value: body_without_numbers(key, body, msisdn_value, only)
    )
    record.announce()
    return counts
