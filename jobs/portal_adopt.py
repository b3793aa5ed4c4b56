"""`azamrecon portal adopt` (docs/portal.md, "Adoption"): the portal's truth at cutover, into the log.

Run once before the receiver takes traffic. Every portal donation not recorded yet is recorded; one already
COMPLETED, FAILED, CANCELLED or REFUNDED as an `adopt` event, a trusted decision of the portal's, so a
rebuild from the log reproduces the portal's state at cutover. Rows already recorded are left alone, so a
second run adds nothing.

It refuses while the portal's rows show sandbox auto-complete at work (COMPLETED AzamPay donations that no
callback in the log named, completed within seconds of their creation): adopting them would credit payments
nobody made. --force adopts anyway, and says so. It lists, whatever it does, where the portal disagrees with
itself. --dry-run computes everything in a transaction that is rolled back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Engine

from pipeline.config import Config
from pipeline.db import transaction
from pipeline.errors import InputError
from pipeline.portal_adopt import AUTO_COMPLETE_SECONDS, auto_completed, inconsistencies
from pipeline.portal_record import record_portal
from pipeline.store.checkpoint import CHECKPOINT
from pipeline.store.portal import PortalRows
from pipeline.store.state import SqlFoldStore


class AdoptRefused(InputError):
    """The portal's rows show sandbox auto-complete at work."""


class _DryRun(Exception):
    pass


@dataclass
class AdoptResult:
    dry_run: bool
    forced: bool
    adopted: int = 0  # final donations recorded as the portal's truth
    recorded: int = 0  # facts recorded in all (first sights included)
    auto_completed: list[int] = field(default_factory=list)
    inconsistencies: list[dict] = field(default_factory=list)


def adopt(engine: Engine, config: Config, now: datetime, *, dry_run: bool = False, force: bool = False) -> AdoptResult:
    result = AdoptResult(dry_run=dry_run, forced=force)
    try:
        with transaction(engine, immediate=True) as session:
            SqlFoldStore(session).lock_checkpoint(CHECKPOINT)
            portal = PortalRows(session, config.portal)
            result.inconsistencies = inconsistencies(portal)
            result.auto_completed = auto_completed(session, config, portal)
            if result.auto_completed and not force:
                raise AdoptRefused(
                    f"the portal shows sandbox auto-complete at work: {len(result.auto_completed)} COMPLETED AzamPay "
                    f"donation(s) completed within {AUTO_COMPLETE_SECONDS}s of creation with no callback (first: "
                    f"{result.auto_completed[0]}); set AZAM_PAY_ENVIRONMENT=production in the portal, or --force"
                )
            report = record_portal(session, config, now, full=True, adopt=True)
            result.adopted, result.recorded = report.adopted, report.facts_recorded
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    return result
