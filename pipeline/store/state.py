"""The fold's view of the database: `SqlFoldStore`, the one object jobs use, made of one mixin per role.

| role        | module                          | what                                                   |
|-------------|---------------------------------|--------------------------------------------------------|
| checkpoint  | pipeline.store.checkpoint       | lock, read and save the fold's checkpoint row           |
| events      | pipeline.store.fold_events      | the log in id order, applied events, event counts       |
| donations   | pipeline.store.donation_states  | donation states by key, derived columns written back    |
| funding     | pipeline.store.funding          | funding credits and patient totals                      |
| anomalies   | pipeline.store.anomalies        | anomalies added, and dropped for a replay or a retry    |
| waiting     | pipeline.store.waiting          | waiting events' lookup keys (waiting_keys)              |
| invariants  | pipeline.store.invariants_sql   | the SQL fast path of pipeline.invariants                |
| reset       | pipeline.store.reset            | every derived table and column back to before event 0   |

Mixins rather than several stores: pipeline.fold_batch.fold_batch takes one FoldStore, and a batch's
reads and writes all run on one session's transaction. The row shapes they share are in
pipeline.store.fold_rows. The hot paths run on the DBAPI connection of that transaction
(pipeline.store.driver); the rest uses Core statements on it. No ORM identity map; writes are executemany.
pipeline.store.memory.MemoryFoldStore offers the FoldStore methods over dicts, for `rebuild --check` and
`--as-of`, which must not write.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from pipeline.store.anomalies import AnomalyRows
from pipeline.store.checkpoint import CheckpointRows
from pipeline.store.donation_states import DonationRows
from pipeline.store.fold_events import EventRows
from pipeline.store.fold_rows import _FoldDriver
from pipeline.store.funding import FundingRows
from pipeline.store.invariants_sql import InvariantRows
from pipeline.store.reset import ResetRows
from pipeline.store.waiting import WaitingRows


class SqlFoldStore(
    CheckpointRows, EventRows, DonationRows, FundingRows, AnomalyRows, WaitingRows, InvariantRows, ResetRows
):
    """The FoldStore (pipeline.fold_batch) on a live session: the incremental fold and the rebuild."""

    def __init__(self, session: Session):
        self.session = session
        self.connection = session.connection()
        self.raw = _FoldDriver(self.connection)
