"""`azamrecon portal diff` (docs/portal.md, "Shadow mode"): every donation and patient where azamrecon's result
differs from the portal's row, with the reason (pipeline.portal_diff). It records the portal's latest facts
first, so the comparison is between two views of the same facts.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Engine

from jobs.portal_sync import sync_portal
from pipeline.config import Config
from pipeline.db import transaction
from pipeline.portal_diff import portal_differences


def portal_diff(engine: Engine, config: Config, now: datetime) -> list[dict]:
    sync_portal(engine, config, now)
    with transaction(engine) as session:
        return portal_differences(session, config)
