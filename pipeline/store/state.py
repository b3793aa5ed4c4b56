"""The fold's view of the database: checkpoint, event batches, donation states, credits, patients, anomalies.

`SqlFoldStore` works on a live session (incremental fold, rebuild). pipeline.store.memory.MemoryFoldStore
offers the same methods over dicts, for `rebuild --check` and `--as-of`, which must not write.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from operator import attrgetter
from typing import Any

from sqlalchemy import Boolean, and_, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from pipeline.fold import DERIVED_FIELDS, STATIC_FIELDS, AnomalyRecord, Credit, DonationState, FoldEvent, PatientTotals
from pipeline.models import (
    Anomaly,
    Donation,
    DonationEvent,
    EventCount,
    FoldCheckpoint,
    FundingCredit,
    Money,
    Patient,
    PaymentEvent,
    UTCDateTime,
    WaitingKey,
)
from pipeline.resolution import ID, REFERENCE, TRANSACTION, WAITING_KINDS, Key
from pipeline.store.driver import UTC, Driver, chunks

CHECKPOINT = "main"  # the fold's checkpoint row; its lock is the fold's lock
_ID_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # engine -> auto_increment_increment

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
    PaymentEvent.msisdn,
    PaymentEvent.operator,
)
STATIC_COLUMNS = (
    Donation.id,
    Donation.patient_id,
    Donation.charge_amount,
    Donation.patient_amount,
    Donation.external_reference,
    Donation.transaction_id,
    Donation.msisdn,
    Donation.provider,
)
assert tuple(column.key for column in STATIC_COLUMNS) == STATIC_FIELDS
STATE_COLUMNS = STATIC_COLUMNS + tuple(getattr(Donation, name) for name in DERIVED_FIELDS)
_STATE_TYPES = [Donation.__table__.c[column.key].type for column in STATE_COLUMNS]
_STATE_DATETIMES = tuple(i for i, kind in enumerate(_STATE_TYPES) if isinstance(kind, UTCDateTime))
_STATE_BOOLS = tuple(i for i, kind in enumerate(_STATE_TYPES) if isinstance(kind, Boolean))
assert [i for i, kind in enumerate(_STATE_TYPES) if isinstance(kind, Money)] == [2, 3]
_DERIVED_DATETIMES = tuple(
    i for i, name in enumerate(DERIVED_FIELDS) if isinstance(Donation.__table__.c[name].type, UTCDateTime)
)
assert not any(isinstance(Donation.__table__.c[name].type, Money) for name in DERIVED_FIELDS)


def _names(columns) -> str:
    return ", ".join(column.key for column in columns)


_EVENT_SELECT = f"SELECT {_names(EVENT_COLUMNS)} FROM payment_events"
_STATE_SELECT = f"SELECT {_names(STATE_COLUMNS)} FROM donations WHERE id IN "


class _FoldDriver(Driver):
    """The driver plus the fold's two row shapes."""

    def events(self, rows: list[tuple]) -> list[FoldEvent]:
        """payment_events rows (EVENT_COLUMNS order) -> FoldEvents. On SQLite, parsing the stored text with
        its zone appended gives the aware datetime in one C call (a third of parse-then-replace)."""
        new, money, cache = tuple.__new__, self.money, self._money_cache
        if self.sqlite:
            parse = datetime.fromisoformat
            return [
                new(
                    FoldEvent,
                    (
                        r[0],
                        parse(r[1] + "+00:00"),
                        r[2],
                        r[3],
                        r[4],
                        cache[r[5]] if r[5] in cache else money(r[5]),
                        *r[6:],
                    ),
                )
                for r in rows
            ]
        return [new(FoldEvent, (r[0], r[1].replace(tzinfo=UTC), r[2], r[3], r[4], money(r[5]), *r[6:])) for r in rows]

    def state(self, row: tuple) -> DonationState:
        """donations row (STATE_COLUMNS order) -> DonationState."""
        values = list(row)
        money, when = self.money, self.when
        values[2], values[3] = money(values[2]), money(values[3])
        for index in _STATE_DATETIMES:
            if values[index] is not None:
                values[index] = when(values[index])
        for index in _STATE_BOOLS:
            if values[index] is not None:
                values[index] = bool(values[index])
        return DonationState(*values)


@dataclass
class Checkpoint:
    name: str
    position: int = 0
    gaps: list[tuple[int, datetime]] = field(default_factory=list)
    events_applied: int = 0
    donation_high: int = 0
    rebuild_until: int | None = None  # a rebuild is refolding the log up to this event id

    def gap_ids(self) -> list[int]:
        return [gap_id for gap_id, _ in self.gaps]


def _checkpoint_of(row: FoldCheckpoint) -> Checkpoint:
    gaps = [
        (gap_id, seen)
        for first, last, stamp in json.loads(row.gaps or "[]")
        for seen in (datetime.fromisoformat(stamp),)
        for gap_id in range(int(first), int(last) + 1)
    ]
    return Checkpoint(row.name, row.position, gaps, row.events_applied, row.donation_high, row.rebuild_until)


def gap_ranges(gaps: list[tuple[int, datetime]]) -> list[list]:
    """Gaps as [[first id, last id, first seen], ...]: a run of missing ids seen together is one entry."""
    ranges: list[list] = []
    for gap_id, seen in sorted(gaps):
        stamp = seen.isoformat()
        if ranges and ranges[-1][1] == gap_id - 1 and ranges[-1][2] == stamp:
            ranges[-1][1] = gap_id
        else:
            ranges.append([gap_id, gap_id, stamp])
    return ranges


@dataclass
class PatientRow:
    id: int
    funding_required: Decimal
    funding_received: Decimal
    status: str
    fully_funded_at: datetime | None


_DERIVED_GETTER = attrgetter(*DERIVED_FIELDS)


class SqlFoldStore:
    """The hot paths run on the DBAPI connection of the session's own transaction (pipeline.store.driver); the rest uses
    Core statements on it. No ORM identity map; writes are executemany."""

    def __init__(self, session: Session):
        self.session = session
        self.connection = session.connection()
        self.raw = _FoldDriver(self.connection)

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
            statement = (
                insert(FoldCheckpoint).prefix_with("OR IGNORE", dialect="sqlite").prefix_with("IGNORE", dialect="mysql")
            )
            session.execute(statement.values(name=name, position=0, gaps="[]", events_applied=0, donation_high=0))
            row = session.execute(query).scalar_one()
        checkpoint = _checkpoint_of(row)
        session.expunge(row)
        return checkpoint

    def read_checkpoint(self, name: str) -> Checkpoint:
        """The checkpoint without taking the lock (read-only jobs)."""
        row = self.session.execute(select(FoldCheckpoint).where(FoldCheckpoint.name == name)).scalar_one_or_none()
        return Checkpoint(name) if row is None else _checkpoint_of(row)

    def save_checkpoint(self, checkpoint: Checkpoint, now: datetime) -> None:
        gaps = json.dumps(gap_ranges(checkpoint.gaps))
        self.session.execute(
            update(FoldCheckpoint)
            .where(FoldCheckpoint.name == checkpoint.name)
            .values(
                position=checkpoint.position,
                gaps=gaps,
                events_applied=checkpoint.events_applied,
                donation_high=checkpoint.donation_high,
                rebuild_until=checkpoint.rebuild_until,
                updated_at=now,
            )
        )

    # -- events -----------------------------------------------------------------------------
    def events_after(
        self, position: int, limit: int, received_until: datetime | None = None, until_id: int | None = None
    ) -> list[FoldEvent]:
        raw = self.raw
        sql, params = f"{_EVENT_SELECT} WHERE id > {raw.mark}", [position]
        if until_id is not None:
            sql += f" AND id <= {raw.mark}"
            params.append(until_id)
        if received_until is not None:
            sql += f" AND received_at <= {raw.mark}"
            params.append(raw.bind_when(received_until))
        sql += f" ORDER BY id LIMIT {raw.mark}"
        params.append(int(limit))
        return raw.events(raw.fetch(sql, params))

    def events_by_ids(self, ids: Iterable[int]) -> list[FoldEvent]:
        ids = sorted(set(ids))
        found = self.raw.events(self.raw.fetch_in(f"{_EVENT_SELECT} WHERE id IN ", ids))
        return sorted(found, key=lambda event: event.id)

    def id_step(self) -> int:
        """How far apart consecutive auto-increment ids are (MySQL's auto_increment_increment; 1 on SQLite).
        Read once per engine: a server setting, and the scheduler folds twice a second."""
        if self.raw.sqlite:
            return 1
        engine = self.connection.engine
        step = _ID_STEPS.get(engine)
        if step is None:
            step = _ID_STEPS[engine] = max(1, int(self.raw.fetch("SELECT @@auto_increment_increment")[0][0]))
        return step

    def max_event_id(self) -> int:
        return self.session.scalar(select(func.max(PaymentEvent.id))) or 0

    def max_donation_id(self) -> int:
        return self.raw.fetch("SELECT MAX(id) FROM donations")[0][0] or 0

    # -- donations --------------------------------------------------------------------------
    def donations_matching(self, wanted: dict[str, set]) -> dict[int, DonationState]:
        """Donations whose column holds one of the wanted values (pipeline.resolution.wanted_values). The keys
        are resolved to ids on the unique indexes alone, then each state row is read once."""
        raw = self.raw
        ids = set(wanted.get(ID, ()))
        for column in (REFERENCE, TRANSACTION):
            if wanted.get(column):
                ids.update(
                    row[0]
                    for row in raw.fetch_in(f"SELECT id FROM donations WHERE {column} IN ", sorted(wanted[column]))
                )
        states: dict[int, DonationState] = {}
        state = raw.state
        for row in raw.fetch_in(_STATE_SELECT, sorted(ids)):
            states[row[0]] = state(row)
        return states

    def transaction_ids_of(self, ids: Iterable[int]) -> set[str]:
        """The transaction ids (where set) of these donations."""
        rows = self.raw.fetch_in(
            "SELECT transaction_id FROM donations WHERE transaction_id IS NOT NULL AND id IN ", sorted(set(ids))
        )
        return {row[0] for row in rows}

    def donation_keys_above(self, donation_id: int) -> tuple[int, set[str], set[int], set[str]]:
        """(highest id, references, ids, transaction ids) of donations created after `donation_id`."""
        references, ids, transactions = set(), set(), set()
        high = donation_id
        rows = self.raw.fetch(
            f"SELECT id, external_reference, transaction_id FROM donations WHERE id > {self.raw.mark}", (donation_id,)
        )
        for donation, reference, transaction in rows:
            high = max(high, donation)
            ids.add(donation)
            if reference:
                references.add(reference)
            if transaction:
                transactions.add(transaction)
        return high, references, ids, transactions

    def write_donations(self, states: Iterable[DonationState]) -> None:
        raw = self.raw
        when = raw.bind_when
        derived = _DERIVED_GETTER
        rows = []
        for state in states:
            values = list(derived(state))
            for index in _DERIVED_DATETIMES:
                if values[index] is not None:
                    values[index] = when(values[index])
            values.append(state.id)
            rows.append(values)
        raw.update_rows("donations", DERIVED_FIELDS, rows)

    # -- anomalies --------------------------------------------------------------------------
    def waiting_matching(self, offered: set[tuple[str, Any]]) -> list[int]:
        """The waiting events with a key among the offered (column, value) pairs, through waiting_keys'
        index: the cost follows what is offered, not how many events wait."""
        raw = self.raw
        by_column: dict[str, set[str]] = {}
        for column, value in offered:
            by_column.setdefault(column, set()).add(str(value))
        found: set[int] = set()
        for column, values in by_column.items():
            for part in chunks(sorted(values)):
                sql = f"SELECT event_id FROM waiting_keys WHERE key_column = {raw.mark} AND key_value IN {raw.marks(len(part))}"
                found.update(row[0] for row in raw.fetch(sql, [column, *part]))
        return sorted(found)

    def set_waiting(self, dropped: Iterable[int], added: Sequence[tuple[FoldEvent, tuple[Key, ...]]]) -> None:
        """Events no longer waiting (retried), then events now waiting with their lookup keys."""
        raw = self.raw
        for part in chunks(sorted(set(dropped))):
            raw.run(f"DELETE FROM waiting_keys WHERE event_id IN {raw.marks(len(part))}", part)
        rows = [
            (event.id, column, value[:255], raw.bind_when(event.received_at))
            for event, keys in added
            for column, value in sorted({(key.column, str(key.value)) for key in keys})
        ]
        raw.many(f"INSERT INTO waiting_keys (event_id, key_column, key_value, received_at) VALUES {raw.marks(4)}", rows)

    def retire_waiting(self, received_before: datetime) -> int:
        """Stop offering new donations to events that have waited since before `received_before`; their
        anomaly stays, and a rebuild reconsiders them."""
        return self.raw.run(
            "DELETE FROM waiting_keys WHERE received_at < " + self.raw.mark, [self.raw.bind_when(received_before)]
        )

    def count_events(self, events: Iterable[FoldEvent]) -> None:
        """Add a batch's events to event_counts (source, auth), under the fold lock like the rest of the batch."""
        raw = self.raw
        counts: dict[tuple[str, str], int] = {}
        for event in events:
            counts[(event.source, event.auth)] = counts.get((event.source, event.auth), 0) + 1
        for (source, auth), count in counts.items():
            if not raw.run(
                f"UPDATE event_counts SET count = count + {raw.mark} WHERE source = {raw.mark} AND auth = {raw.mark}",
                [count, source, auth],
            ):
                raw.execute(
                    f"INSERT INTO event_counts (source, auth, count) VALUES {raw.marks(3)}", [source, auth, count]
                )

    def applied_events(self, donation_ids: Iterable[int]) -> dict[int, list[int]]:
        """The events applied to each of these donations, in id order (an exact replay refolds them)."""
        found: dict[int, list[int]] = {}
        for donation_id, event_id in self.raw.fetch_in(
            "SELECT donation_id, event_id FROM donation_events WHERE donation_id IN ", sorted(set(donation_ids))
        ):
            found.setdefault(donation_id, []).append(event_id)
        for ids in found.values():
            ids.sort()
        return found

    def add_applied(self, pairs: Sequence[tuple[int, int]]) -> None:
        """(event id, donation id) of the events a batch applied."""
        self.raw.many(f"INSERT INTO donation_events (event_id, donation_id) VALUES {self.raw.marks(2)}", pairs)

    def add_anomalies(self, anomalies: Sequence[AnomalyRecord]) -> None:
        if anomalies:
            self.raw.many(
                f"INSERT INTO anomalies (event_id, donation_id, kind, detail) VALUES {self.raw.marks(4)}", anomalies
            )

    def drop_anomalies(self, donation_ids: Iterable[int] = (), waiting_events: Iterable[int] = ()) -> None:
        """Anomalies a replay of these donations, or a new look at these waiting events, raises again (or no
        longer raises). A waiting event's anomaly may name a donation it was not applied to: a replay keeps it."""
        for part in chunks(sorted(set(donation_ids))):
            self.session.execute(
                delete(Anomaly).where(Anomaly.donation_id.in_(part), Anomaly.kind.not_in(WAITING_KINDS))
            )
        for part in chunks(sorted(set(waiting_events))):
            self.session.execute(delete(Anomaly).where(Anomaly.kind.in_(WAITING_KINDS), Anomaly.event_id.in_(part)))

    # -- credits and patients ---------------------------------------------------------------
    def apply_credit_changes(self, changes: Sequence[tuple[Credit | None, Credit | None]]) -> None:
        raw = self.raw
        money, when = raw.bind_money, raw.bind_when
        removed = [old.donation_id for old, new in changes if old is not None and new is None]
        added = [
            (new.donation_id, new.patient_id, money(new.amount), new.event_id, when(new.credited_at))
            for old, new in changes
            if old is None and new is not None
        ]
        moved = [
            (new.event_id, when(new.credited_at), money(new.amount), new.patient_id, new.donation_id)
            for old, new in changes
            if old is not None and new is not None and old != new
        ]
        for part in chunks(removed):
            self.session.execute(delete(FundingCredit).where(FundingCredit.donation_id.in_(part)))
        raw.many(
            f"INSERT INTO funding_credits (donation_id, patient_id, amount, event_id, credited_at) VALUES {raw.marks(5)}",
            added,
        )
        raw.update_rows(
            "funding_credits", ("event_id", "credited_at", "amount", "patient_id"), moved, key="donation_id"
        )

    def patients(self, ids: Iterable[int]) -> dict[int, PatientRow]:
        raw = self.raw
        found: dict[int, PatientRow] = {}
        rows = raw.fetch_in(
            "SELECT id, funding_required, funding_received, status, fully_funded_at FROM patients WHERE id IN ",
            sorted(set(ids)),
        )
        for patient_id, required, received, status, fully_funded_at in rows:
            found[patient_id] = PatientRow(
                patient_id, raw.money(required), raw.money(received), status, raw.when(fully_funded_at)
            )
        return found

    def credits_of_patients(self, ids: Iterable[int]) -> dict[int, list[Credit]]:
        raw = self.raw
        found: dict[int, list[Credit]] = {}
        rows = raw.fetch_in(
            "SELECT donation_id, patient_id, amount, event_id, credited_at FROM funding_credits WHERE patient_id IN ",
            sorted(set(ids)),
        )
        for donation_id, patient_id, amount, event_id, credited_at in rows:
            found.setdefault(patient_id, []).append(
                Credit(donation_id, patient_id, raw.money(amount), event_id, raw.when(credited_at))
            )
        return found

    def write_patients(self, totals: dict[int, PatientTotals]) -> None:
        raw = self.raw
        rows = [
            (raw.bind_money(t.funding_received), t.status, raw.bind_when(t.fully_funded_at), patient_id)
            for patient_id, t in totals.items()
        ]
        raw.update_rows("patients", ("funding_received", "status", "fully_funded_at"), rows)

    # -- invariants -------------------------------------------------------------------------
    def invariant_violations(
        self, patient_ids: Iterable[int] | None = None, donation_ids: Iterable[int] | None = None
    ) -> list[str]:
        """Each patient's funding_received equals the sum of its credits; only COMPLETED donations have
        credits, of their patient_amount; a COMPLETED donation has exactly one credit. With ids given (a
        fold batch), only those patients and donations are checked."""
        if patient_ids is None and donation_ids is None:
            return self._all_invariant_violations()
        raw = self.raw
        problems: list[str] = []
        # Stored values are compared as stored (integer cents on SQLite, DECIMAL on MySQL): exact either way.
        for part in chunks(sorted(set(patient_ids or ()))):
            rows = raw.fetch(
                "SELECT p.id, p.funding_received, (SELECT COALESCE(SUM(c.amount), 0) FROM funding_credits c WHERE c.patient_id = p.id) "
                f"FROM patients p WHERE p.id IN {raw.marks(len(part))}",
                part,
            )
            for patient_id, received, total in rows:
                if received != total:
                    problems.append(
                        f"patient {patient_id}: funding_received {raw.money(received)} != sum of credits {raw.money(total)}"
                    )
        for part in chunks(sorted(set(donation_ids or ()))):
            rows = raw.fetch(
                "SELECT d.id, d.status, d.patient_amount, c.amount FROM donations d LEFT OUTER JOIN funding_credits c ON c.donation_id = d.id "
                "WHERE ((c.id IS NOT NULL AND (d.status != 'COMPLETED' OR c.amount != d.patient_amount)) OR (c.id IS NULL AND d.status = 'COMPLETED')) "
                f"AND d.id IN {raw.marks(len(part))} LIMIT 20",
                part,
            )
            for donation_id, status, patient_amount, credited in rows:
                problems.append(
                    f"donation {donation_id}: status {status}, credit {raw.money(credited)}, patient_amount {raw.money(patient_amount)}"
                )
        return problems

    def _all_invariant_violations(self) -> list[str]:
        session = self.session
        problems: list[str] = []
        sums = (
            select(FundingCredit.patient_id, func.coalesce(func.sum(FundingCredit.amount), 0).label("total"))
            .group_by(FundingCredit.patient_id)
            .subquery()
        )
        query = select(Patient.id, Patient.funding_received, func.coalesce(sums.c.total, 0)).outerjoin(
            sums, sums.c.patient_id == Patient.id
        )
        for patient_id, received, total in session.execute(query):
            if Decimal(received) != Decimal(total):
                problems.append(f"patient {patient_id}: funding_received {received} != sum of credits {total}")
        credit_query = (
            select(Donation.id, Donation.status, Donation.patient_amount, FundingCredit.amount)
            .select_from(Donation)
            .outerjoin(FundingCredit, FundingCredit.donation_id == Donation.id)
            .where(
                or_(
                    and_(
                        FundingCredit.id.is_not(None),
                        or_(Donation.status != "COMPLETED", FundingCredit.amount != Donation.patient_amount),
                    ),
                    and_(FundingCredit.id.is_(None), Donation.status == "COMPLETED"),
                )
            )
        )
        for donation_id, status, patient_amount, credited in session.execute(credit_query.limit(20)):
            problems.append(
                f"donation {donation_id}: status {status}, credit {credited}, patient_amount {patient_amount}"
            )
        return problems

    # -- rebuild ----------------------------------------------------------------------------
    def reset_derived(self, checkpoint_name: str) -> None:
        """Every derived column and table back to its state before event 0."""
        session = self.session
        session.execute(delete(FundingCredit))
        session.execute(delete(Anomaly))
        session.execute(delete(DonationEvent))
        session.execute(delete(WaitingKey))
        session.execute(delete(EventCount))
        session.execute(update(Donation).values(**{name: default for name, default in _DERIVED_DEFAULTS.items()}))
        session.execute(update(Patient).values(funding_received=Decimal("0"), status="FUNDING", fully_funded_at=None))
        session.execute(delete(FoldCheckpoint).where(FoldCheckpoint.name == checkpoint_name))


def offered_keys(
    ids: Iterable[int] = (), references: Iterable[str] = (), transactions: Iterable[str] = ()
) -> set[tuple[str, Any]]:
    """Donation facts as the (column, value) pairs SqlFoldStore.waiting_matching takes."""
    offered = {(ID, donation_id) for donation_id in ids}
    offered.update((REFERENCE, reference) for reference in references)
    offered.update((TRANSACTION, transaction) for transaction in transactions)
    return offered


_DERIVED_DEFAULTS = {name: getattr(DonationState(0, None, Decimal(0), Decimal(0)), name) for name in DERIVED_FIELDS}


def fold_lag(session: Session, name: str = CHECKPOINT) -> tuple[int, datetime | None]:
    """(events not yet folded, received_at of the oldest of them) for reports and metrics."""
    position = session.scalar(select(FoldCheckpoint.position).where(FoldCheckpoint.name == name)) or 0
    count, oldest = session.execute(
        select(func.count(PaymentEvent.id), func.min(PaymentEvent.received_at)).where(PaymentEvent.id > position)
    ).one()
    return count, oldest
