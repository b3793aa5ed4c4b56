"""Operator decisions: the only way out of REVIEW and the only override (DESIGN §4). Appended to the log."""
from __future__ import annotations

import getpass
import json
from datetime import datetime

from sqlalchemy.engine import Engine

from pipeline.db import transaction
from pipeline.errors import InputError
from pipeline.events import EventFields
from pipeline.fold import OPERATOR_STATUSES
from pipeline.store.donations import get_donation
from pipeline.store.events import append_event, event_row


def resolve_donation(engine: Engine, donation_id: int, status: str, note: str, now: datetime, actor: str | None = None) -> int:
    """Append an `operator` event deciding the donation's status; the next fold applies it. Returns the event id."""
    status = status.upper()
    if status not in OPERATOR_STATUSES:
        raise InputError(f"--status must be one of {', '.join(OPERATOR_STATUSES)}: {status!r}")
    if not note or not note.strip():
        raise InputError("--note is required: say why (it is kept in the log)")
    actor = actor or _whoami()
    body = json.dumps({"donation_id": donation_id, "status": status, "note": note.strip(), "actor": actor}, ensure_ascii=False).encode()
    fields = EventFields(status=status, status_raw=status)
    with transaction(engine, immediate=True) as session:  # read then write: take SQLite's write lock first
        get_donation(session, donation_id)
        return append_event(
            session,
            event_row(source="operator", body=body, received_at=now, auth="n/a", fields=fields, donation_id=donation_id, content_type="application/json"),
        )


def _whoami() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"
