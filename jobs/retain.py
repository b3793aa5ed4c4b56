"""Retention of phone numbers (docs/privacy.md): numbers past `privacy.msisdn_retention_days` become
`hmac:<16 hex>:<last 3>`, through the sanctioned rewrite (jobs/rewrite.py):

- in stored bodies, per event, once it was received before the cutoff;
- in the typed columns the fold compares (payment_events.msisdn, donations.msisdn), per number: a number
  changes everywhere at once, in one transaction, once no event received and no donation created after
  the cutoff still holds it (pipeline.resolution does not compare a retained number, so no rewrite
  changes which callbacks resolve; docs/privacy.md);
- in the log files (jobs/log_sweep.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from loguru import logger
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from jobs.log_sweep import stale_spool_files, sweep_logs
from jobs.rewrite import (
    RETAIN,
    Clock,
    RewriteRecord,
    control_row,
    retire_numbers,
    rewrite_bodies,
    scan_events,
    verify_key,
)
from jobs.runs import utcnow
from pipeline.config import Config
from pipeline.db import transaction
from pipeline.models import Donation, PaymentEvent, PrivacyControl
from pipeline.privacy import RETAINED_PREFIX, PrivacyKey, load_key
from pipeline.rewrites import body_without_numbers, places


def retain(
    engine: Engine, config: Config, now: datetime, dry_run: bool = False, clock: Clock = utcnow
) -> dict[str, Any]:
    """Apply privacy.msisdn_retention_days at `now`: bodies, typed columns, log files (module doc). Idempotent."""
    key = load_key(config.privacy.key_file)
    verify_key(engine, key)
    cutoff = now - timedelta(days=config.privacy.msisdn_retention_days)
    record = RewriteRecord(RETAIN, now, key, cutoff=cutoff, clock=clock)
    counts: dict[str, Any] = {"cutoff": cutoff.isoformat()}
    counts.update(_retain_bodies(engine, key, cutoff, record, dry_run))
    counts.update(_retain_numbers(engine, key, cutoff, record, dry_run))
    counts.update(sweep_logs(Path(config.logging.dir), cutoff, dry_run))
    stale = stale_spool_files(Path(config.receiver.spool_dir), cutoff)
    if stale:
        logger.warning(
            f"privacy retain: {len(stale)} spool file(s) last written before {cutoff:%Y-%m-%d}, with callbacks never ingested: "
            f"run `azamrecon events ingest-spool` or look at them ({', '.join(path.name for path in stale[:3])})"
        )
    counts["stale_spool_files"] = len(stale)
    record.announce()
    return counts


def _retain_bodies(
    engine: Engine, key: PrivacyKey, cutoff: datetime, record: RewriteRecord, dry_run: bool
) -> dict[str, int]:
    """Numbers out of the bodies of events received before the cutoff, from privacy_control's position on.
    The position then moves up to the first event received after the cutoff: what lies below it is done."""
    with transaction(engine) as session:
        start = session.scalar(select(PrivacyControl.bodies_retained_through).where(PrivacyControl.id == 1)) or 0
    candidates = []
    scanned = 0
    for event_id, body, msisdn in scan_events(engine, (PaymentEvent.received_at < cutoff,), start=start):
        scanned += 1
        if body_without_numbers(key, bytes(body), msisdn) is not None:
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
            rewritten = rewrite_bodies(
                engine, key, record, candidates, lambda _id, body, msisdn: body_without_numbers(key, body, msisdn)
            )
        if position > start:
            with transaction(engine, immediate=True) as session:
                control_row(session)
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


def _retain_numbers(
    engine: Engine, key: PrivacyKey, cutoff: datetime, record: RewriteRecord, dry_run: bool
) -> dict[str, int]:
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
        for event_id, msisdn in scan_events(
            engine, (PaymentEvent.received_at < cutoff, *clear), columns=(PaymentEvent.id, PaymentEvent.msisdn)
        )
    ]
    held = places(events, donations, exclude=young)
    kept = len({number for _, number in events} | {number for _, number in donations}) - len(held)
    counts = {
        "numbers_retired": 0,
        "numbers_kept_in_use": kept,
        "msisdn_events_rewritten": 0,
        "msisdn_donations_rewritten": 0,
    }
    if dry_run:
        counts["numbers_retired"] = len(held)
        return counts
    retire_numbers(engine, key, record, held, counts, recent=(event_top, donation_top, cutoff))
    return counts
