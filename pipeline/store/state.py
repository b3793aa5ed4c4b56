"""The fold's view of the database: checkpoint, event batches, donation states, credits, patients, anomalies.

`SqlFoldStore` works on a live session (incremental fold, rebuild). pipeline.store.memory.MemoryFoldStore
offers the same methods over dicts, for `rebuild --check` and `--as-of`, which must not write.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Iterable, Iterator, Sequence

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from pipeline.fold import DERIVED_FIELDS, AnomalyRecord, Credit, DonationState, FoldEvent, PatientTotals
from pipeline.models import Anomaly, Donation, FoldCheckpoint, FundingCredit, Patient, PaymentEvent

IN_CHUNK = 900  # stays under SQLite's bound-parameter limit on old builds

EVENT_COLUMNS = (
    PaymentEvent.id,
    PaymentEvent.received_at,
    PaymentEvent.source,
    PaymentEvent.auth,
    PaymentEvent.status,
    PaymentEvent.amount,
    PaymentEvent.utilityref,
    PaymentEvent.externalreference,
    PaymentEvent.donation_hint,
    PaymentEvent.transaction_ref,
    PaymentEvent.donation_id,
    PaymentEvent.parse_error,
    PaymentEvent.status_raw,
)
STATIC_COLUMNS = (
    Donation.id,
    Donation.patient_id,
    Donation.charge_amount,
    Donation.patient_amount,
    Donation.external_reference,
    Donation.transaction_id,
)
STATE_COLUMNS = STATIC_COLUMNS + tuple(getattr(Donation, name) for name in DERIVED_FIELDS)


def chunks(items: Sequence, size: int = IN_CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class Checkpoint:
    name: str
    position: int = 0
    gaps: list[tuple[int, datetime]] = field(default_factory=list)
    events_applied: int = 0
    donation_high: int = 0

    def gap_ids(self) -> list[int]:
        return [gap_id for gap_id, _ in self.gaps]


@dataclass
class PatientRow:
    id: int
    funding_required: Decimal
    funding_received: Decimal
    status: str
    fully_funded_at: datetime | None


_DONATIONS = Donation.__table__
_UPDATE_DONATION = (
    update(_DONATIONS)
    .where(_DONATIONS.c.id == bindparam("b_id"))
    .values({name: bindparam(name) for name in DERIVED_FIELDS})
)
_PATIENTS = Patient.__table__
_UPDATE_PATIENT = (
    update(_PATIENTS)
    .where(_PATIENTS.c.id == bindparam("b_id"))
    .values(funding_received=bindparam("funding_received"), status=bindparam("status"), fully_funded_at=bindparam("fully_funded_at"))
)


class SqlFoldStore:
    """Hot paths use Core statements on the session's connection: no ORM identity map, executemany writes."""

    def __init__(self, session: Session):
        self.session = session
        self.connection = session.connection()

    # -- checkpoint ---------------------------------------------------------------------------
    def lock_checkpoint(self, name: str) -> Checkpoint:
        """Read the checkpoint, holding the fold's lock until the transaction ends.

        SQLite: the caller's transaction began with BEGIN IMMEDIATE, so it already holds the write
        lock. MySQL: SELECT ... FOR UPDATE on the checkpoint row; a second fold waits here.
        """
        session = self.session
        query = select(FoldCheckpoint).where(FoldCheckpoint.name == name).with_for_update()
        row = session.execute(query).scalar_one_or_none()
        if row is None:
            statement = insert(FoldCheckpoint).prefix_with("OR IGNORE", dialect="sqlite").prefix_with("IGNORE", dialect="mysql")
            session.execute(statement.values(name=name, position=0, gaps="[]", events_applied=0, donation_high=0))
            row = session.execute(query).scalar_one()
        gaps = [(int(gap_id), datetime.fromisoformat(seen)) for gap_id, seen in json.loads(row.gaps or "[]")]
        checkpoint = Checkpoint(name, row.position, gaps, row.events_applied, row.donation_high)
        session.expunge(row)
        return checkpoint

    def read_checkpoint(self, name: str) -> Checkpoint:
        """The checkpoint without taking the lock (read-only jobs)."""
        row = self.session.execute(select(FoldCheckpoint).where(FoldCheckpoint.name == name)).scalar_one_or_none()
        if row is None:
            return Checkpoint(name)
        gaps = [(int(gap_id), datetime.fromisoformat(seen)) for gap_id, seen in json.loads(row.gaps or "[]")]
        return Checkpoint(name, row.position, gaps, row.events_applied, row.donation_high)

    def save_checkpoint(self, checkpoint: Checkpoint, now: datetime) -> None:
        gaps = json.dumps([[gap_id, seen.isoformat()] for gap_id, seen in checkpoint.gaps])
        self.session.execute(
            update(FoldCheckpoint)
            .where(FoldCheckpoint.name == checkpoint.name)
            .values(
                position=checkpoint.position,
                gaps=gaps,
                events_applied=checkpoint.events_applied,
                donation_high=checkpoint.donation_high,
                updated_at=now,
            )
        )

    # -- events -----------------------------------------------------------------------------
    def events_after(
        self, position: int, limit: int, received_until: datetime | None = None, until_id: int | None = None
    ) -> list[FoldEvent]:
        query = select(*EVENT_COLUMNS).where(PaymentEvent.id > position).order_by(PaymentEvent.id).limit(limit)
        if until_id is not None:
            query = query.where(PaymentEvent.id <= until_id)
        if received_until is not None:
            query = query.where(PaymentEvent.received_at <= received_until)
        return [FoldEvent(*row) for row in self.connection.execute(query)]

    def events_by_ids(self, ids: Iterable[int]) -> list[FoldEvent]:
        ids = sorted(set(ids))
        found: list[FoldEvent] = []
        for part in chunks(ids):
            found.extend(FoldEvent(*row) for row in self.connection.execute(select(*EVENT_COLUMNS).where(PaymentEvent.id.in_(part))))
        return sorted(found, key=lambda event: event.id)

    def max_event_id(self) -> int:
        return self.session.scalar(select(func.max(PaymentEvent.id))) or 0

    # -- donations --------------------------------------------------------------------------
    def donations_matching(self, references: set[str], ids: set[int], transactions: set[str]) -> dict[int, DonationState]:
        states: dict[int, DonationState] = {}
        for column, values in ((Donation.external_reference, references), (Donation.id, ids), (Donation.transaction_id, transactions)):
            values = sorted(values)
            for part in chunks(values):
                for row in self.connection.execute(select(*STATE_COLUMNS).where(column.in_(part))):
                    if row[0] not in states:
                        states[row[0]] = DonationState(*row)
        return states

    def donation_keys_above(self, donation_id: int) -> tuple[int, set[str], set[int], set[str]]:
        """(highest id, references, ids, transaction ids) of donations created after `donation_id`."""
        references, ids, transactions = set(), set(), set()
        high = donation_id
        query = select(Donation.id, Donation.external_reference, Donation.transaction_id).where(Donation.id > donation_id)
        for donation, reference, transaction in self.session.execute(query):
            high = max(high, donation)
            ids.add(donation)
            if reference:
                references.add(reference)
            if transaction:
                transactions.add(transaction)
        return high, references, ids, transactions

    def write_donations(self, states: Iterable[DonationState]) -> None:
        rows = [{"b_id": state.id, **{name: getattr(state, name) for name in DERIVED_FIELDS}} for state in states]
        if rows:
            self.connection.execute(_UPDATE_DONATION, rows)

    # -- anomalies --------------------------------------------------------------------------
    def unknown_reference_events(self, references: set[str], ids: set[int], transactions: set[str]) -> list[int]:
        """Events still waiting as unknown_reference that could resolve through one of these keys.

        The key sets can hold every donation (first fold, fold after a rebuild), so each IN list is
        chunked like every other lookup here: one unchunked query overflows SQLite's bound-parameter limit.
        """
        keyed = []
        if references:
            keyed += [(PaymentEvent.utilityref, sorted(references)), (PaymentEvent.externalreference, sorted(references))]
        if ids:
            keyed += [(PaymentEvent.donation_id, sorted(ids)), (PaymentEvent.donation_hint, sorted(str(i) for i in ids))]
        if transactions:
            keyed += [(PaymentEvent.transaction_ref, sorted(transactions)), (PaymentEvent.externalreference, sorted(transactions))]
        query = select(Anomaly.event_id).join(PaymentEvent, PaymentEvent.id == Anomaly.event_id).where(Anomaly.kind == "unknown_reference")
        found: set[int] = set()
        for column, values in keyed:
            for part in chunks(values):
                found.update(self.session.scalars(query.where(column.in_(part))))
        return sorted(found)

    def add_anomalies(self, anomalies: Sequence[AnomalyRecord]) -> None:
        if anomalies:
            self.connection.execute(insert(Anomaly.__table__), [record._asdict() for record in anomalies])

    def drop_anomalies(self, donation_ids: Iterable[int] = (), unknown_reference_events: Iterable[int] = ()) -> None:
        """Anomalies a replay or a late resolution will raise again (or no longer raises)."""
        for part in chunks(sorted(set(donation_ids))):
            self.session.execute(delete(Anomaly).where(Anomaly.donation_id.in_(part)))
        for part in chunks(sorted(set(unknown_reference_events))):
            self.session.execute(delete(Anomaly).where(Anomaly.kind == "unknown_reference", Anomaly.event_id.in_(part)))

    # -- credits and patients ---------------------------------------------------------------
    def apply_credit_changes(self, changes: Sequence[tuple[Credit | None, Credit | None]]) -> None:
        removed = [old.donation_id for old, new in changes if old is not None and new is None]
        added = [new._asdict() for old, new in changes if old is None and new is not None]
        moved = [
            {"b_donation_id": new.donation_id, "event_id": new.event_id, "credited_at": new.credited_at, "amount": new.amount, "patient_id": new.patient_id}
            for old, new in changes
            if old is not None and new is not None and old != new
        ]
        for part in chunks(removed):
            self.session.execute(delete(FundingCredit).where(FundingCredit.donation_id.in_(part)))
        if added:
            self.connection.execute(insert(FundingCredit.__table__), added)
        if moved:
            statement = (
                update(FundingCredit.__table__)
                .where(FundingCredit.__table__.c.donation_id == bindparam("b_donation_id"))
                .values(
                    event_id=bindparam("event_id"),
                    credited_at=bindparam("credited_at"),
                    amount=bindparam("amount"),
                    patient_id=bindparam("patient_id"),
                )
            )
            self.connection.execute(statement, moved)

    def patients(self, ids: Iterable[int]) -> dict[int, PatientRow]:
        found: dict[int, PatientRow] = {}
        columns = (Patient.id, Patient.funding_required, Patient.funding_received, Patient.status, Patient.fully_funded_at)
        for part in chunks(sorted(set(ids))):
            for row in self.connection.execute(select(*columns).where(Patient.id.in_(part))):
                found[row[0]] = PatientRow(*row)
        return found

    def credits_of_patients(self, ids: Iterable[int]) -> dict[int, list[Credit]]:
        found: dict[int, list[Credit]] = {}
        columns = (FundingCredit.donation_id, FundingCredit.patient_id, FundingCredit.amount, FundingCredit.event_id, FundingCredit.credited_at)
        for part in chunks(sorted(set(ids))):
            for row in self.connection.execute(select(*columns).where(FundingCredit.patient_id.in_(part))):
                found.setdefault(row[1], []).append(Credit(*row))
        return found

    def write_patients(self, totals: dict[int, PatientTotals]) -> None:
        rows = [
            {"b_id": patient_id, "funding_received": t.funding_received, "status": t.status, "fully_funded_at": t.fully_funded_at}
            for patient_id, t in totals.items()
        ]
        if rows:
            self.connection.execute(_UPDATE_PATIENT, rows)

    # -- invariants -------------------------------------------------------------------------
    def invariant_violations(self, patient_ids: Iterable[int] | None = None, donation_ids: Iterable[int] | None = None) -> list[str]:
        """Each patient's funding_received equals the sum of its credits; only COMPLETED donations have
        credits, of their patient_amount; a COMPLETED donation has exactly one credit."""
        session = self.session
        problems: list[str] = []
        sums = (
            select(FundingCredit.patient_id, func.coalesce(func.sum(FundingCredit.amount), 0).label("total"))
            .group_by(FundingCredit.patient_id)
            .subquery()
        )
        query = select(Patient.id, Patient.funding_received, func.coalesce(sums.c.total, 0)).outerjoin(sums, sums.c.patient_id == Patient.id)
        if patient_ids is not None:
            patient_ids = sorted(set(patient_ids))
            if not patient_ids:
                query = None
        for part in chunks(patient_ids) if patient_ids is not None else [None]:
            if query is None:
                break
            scoped = query if part is None else query.where(Patient.id.in_(part))
            for patient_id, received, total in session.execute(scoped):
                if Decimal(received) != Decimal(total):
                    problems.append(f"patient {patient_id}: funding_received {received} != sum of credits {total}")
        credit_query = (
            select(Donation.id, Donation.status, Donation.patient_amount, FundingCredit.amount)
            .select_from(Donation)
            .outerjoin(FundingCredit, FundingCredit.donation_id == Donation.id)
            .where(
                or_(
                    and_(FundingCredit.id.is_not(None), or_(Donation.status != "COMPLETED", FundingCredit.amount != Donation.patient_amount)),
                    and_(FundingCredit.id.is_(None), Donation.status == "COMPLETED"),
                )
            )
        )
        donation_ids = None if donation_ids is None else sorted(set(donation_ids))
        for part in chunks(donation_ids) if donation_ids is not None else [None]:
            scoped = credit_query if part is None else credit_query.where(Donation.id.in_(part))
            for donation_id, status, patient_amount, credited in session.execute(scoped.limit(20)):
                problems.append(f"donation {donation_id}: status {status}, credit {credited}, patient_amount {patient_amount}")
        return problems

    # -- rebuild ----------------------------------------------------------------------------
    def reset_derived(self, checkpoint_name: str) -> None:
        """Every derived column and table back to its state before event 0."""
        session = self.session
        session.execute(delete(FundingCredit))
        session.execute(delete(Anomaly))
        session.execute(update(Donation).values(**{name: default for name, default in _DERIVED_DEFAULTS.items()}))
        session.execute(update(Patient).values(funding_received=Decimal("0"), status="FUNDING", fully_funded_at=None))
        session.execute(delete(FoldCheckpoint).where(FoldCheckpoint.name == checkpoint_name))


_DERIVED_DEFAULTS = {name: getattr(DonationState(0, None, Decimal(0), Decimal(0)), name) for name in DERIVED_FIELDS}


def fold_lag(session: Session, name: str = "main") -> tuple[int, datetime | None]:
    """(events not yet folded, received_at of the oldest of them) for reports and metrics."""
    position = session.scalar(select(FoldCheckpoint.position).where(FoldCheckpoint.name == name)) or 0
    count, oldest = session.execute(
        select(func.count(PaymentEvent.id), func.min(PaymentEvent.received_at)).where(PaymentEvent.id > position)
    ).one()
    return count, oldest

