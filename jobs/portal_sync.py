"""Portal mode's read job (docs/portal.md): before every fold, the portal's rows above the highest id read are
compared with what azamrecon last recorded of them; every portal.scan_interval_seconds, every row is (the
admin's queryset.update() leaves updated_at alone, so change detection never relies on it). The rule is
pipeline.portal_record.record_portal; this job owns its transaction and the fold lock it holds.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Engine

from pipeline.config import Config
from pipeline.db import transaction
from pipeline.portal_record import SyncReport, record_portal
from pipeline.store.checkpoint import CHECKPOINT
from pipeline.store.state import SqlFoldStore


def sync_portal(engine: Engine, config: Config, now: datetime, *, full: bool = False) -> SyncReport:
    """Record the portal's new and changed rows in the log. full=True compares every row now."""
    with transaction(engine, immediate=True) as session:
        SqlFoldStore(session).lock_checkpoint(CHECKPOINT)  # one recorder at a time, with the folds
        return record_portal(session, config, now, full=full)
