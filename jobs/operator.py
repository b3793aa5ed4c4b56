"""Operator decisions: the only way out of REVIEW and the only override (docs/fold.md,
"Status is derived from order-independent aggregates"). Appended to the log.

Each decision's body records who made it: the OS account that ran the command and sudo's invoking
user, always, plus `actor`, the person the operator says they act for (--actor), which is only a
claim and so never replaces the OS identity.
"""

from __future__ import annotations

import json
import os
import pwd
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from pipeline.db import transaction
from pipeline.errors import AzamreconError, InputError
from pipeline.events import EventFields
from pipeline.fold import COMPLETED, NOT_APPLICABLE, OPERATOR_STATUSES, TERMINAL_STATUSES, Source
from pipeline.models import PaymentEvent
from pipeline.store.donations import get_donation
from pipeline.store.events import append_event, event_row

BODY_KEYS = ("donation_id", "status", "note", "os_user", "sudo_user", "actor")


def needs_confirmation(current_status: str, decision: str) -> str | None:
    """Why a decision must be confirmed (--yes or the prompt), or None when it may go ahead as asked.

    Reversing a credit, or replacing any other terminal status, moves money or undoes an outcome the
    log already settled; a decision on PENDING or REVIEW is the ordinary way out and needs nothing.
    """
    decision = decision.upper()
    if current_status == COMPLETED and decision != COMPLETED:
        return f"deciding {decision} reverses its credit (it is COMPLETED)"
    if current_status in TERMINAL_STATUSES and decision != current_status:
        return f"deciding {decision} replaces its final status {current_status}"
    return None


def check_decision(status: str, note: str, actor: str | None = None) -> tuple[str, str, str | None]:
    """The decision normalised (status upper-case, note and actor stripped), or a one-line InputError."""
    status = status.upper()
    if status not in OPERATOR_STATUSES:
        raise InputError(f"--status must be one of {', '.join(OPERATOR_STATUSES)}: {status!r}")
    if not note or not note.strip():
        raise InputError("--note is required: say why (it is kept in the log)")
    if actor is not None and not actor.strip():
        raise InputError("--actor must not be empty (leave it out when acting for no one else)")
    return status, note.strip(), None if actor is None else actor.strip()


def current_status(engine: Engine, donation_id: int) -> str:
    """The donation's folded status; NotFound for an unknown id."""
    with transaction(engine) as session:
        return get_donation(session, donation_id).status


def resolve_donation(
    engine: Engine,
    donation_id: int,
    status: str,
    note: str,
    now: datetime,
    actor: str | None = None,
    expected_status: str | None = None,
) -> int:
    """Append an `operator` event deciding the donation's status; the next fold applies it. Returns the event id.

    With `expected_status` (the status the operator decided on, and perhaps confirmed), nothing is
    appended if the donation has moved on since: a confirmation given for one status is no consent
    for another.
    """
    status, note, actor = check_decision(status, note, actor)
    body = json.dumps(
        dict(zip(BODY_KEYS, (donation_id, status, note, os_user(), sudo_user(), actor), strict=True)),
        ensure_ascii=False,
    ).encode()
    fields = EventFields(status=status, status_raw=status)
    with transaction(engine, immediate=True) as session:  # read then write: take SQLite's write lock first
        found = get_donation(session, donation_id).status
        if expected_status is not None and found != expected_status:
            raise AzamreconError(
                f"donation {donation_id} changed from {expected_status} to {found} meanwhile; nothing appended: run the command again"
            )
        return append_event(
            session,
            event_row(
                source=Source.OPERATOR,
                body=body,
                received_at=now,
                auth=NOT_APPLICABLE,
                fields=fields,
                donation_id=donation_id,
                content_type="application/json",
            ),
        )


def decisions(session: Session, donation_id: int) -> list[dict]:
    """The donation's operator events, oldest first, with who decided (keys absent from older bodies are None)."""
    query = (
        select(PaymentEvent)
        .where(PaymentEvent.source == Source.OPERATOR, PaymentEvent.donation_id == donation_id)
        .order_by(PaymentEvent.id)
    )
    rows = []
    for event in session.scalars(query):
        body = _decoded(event.body)
        rows.append(
            {"event_id": event.id, "received_at": event.received_at, "status": event.status}
            | {key: body.get(key) for key in ("note", "os_user", "sudo_user", "actor")}
        )
    return rows


def _decoded(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except ValueError:  # bodies are written above as JSON; a foreign row still lists, without its details
        return {}
    return data if isinstance(data, dict) else {}


def os_user() -> str:
    """The account the process runs as, by its uid: $USER and $LOGNAME are the caller's to set, the uid is not."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry, as in some containers
        return f"uid:{uid}"


def sudo_user() -> str | None:
    """Who ran sudo, when the command runs under it (the OS user is then root)."""
    return os.environ.get("SUDO_USER") or None
