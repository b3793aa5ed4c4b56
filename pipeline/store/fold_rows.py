"""The fold's row shapes on the raw driver: payment_events -> FoldEvent, donations -> DonationState.

Shared by the role modules SqlFoldStore is made of (pipeline.store.state), each a mixin over `Rows`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from operator import attrgetter

from sqlalchemy import Boolean
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from pipeline.fold import DERIVED_FIELDS, STATIC_FIELDS, DonationState, FoldEvent
from pipeline.models import Donation, Money, PaymentEvent, UTCDateTime
from pipeline.store.driver import Driver

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
    PaymentEvent.patient_id,
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
DERIVED_DATETIMES = tuple(
    i for i, name in enumerate(DERIVED_FIELDS) if isinstance(Donation.__table__.c[name].type, UTCDateTime)
)
assert not any(isinstance(Donation.__table__.c[name].type, Money) for name in DERIVED_FIELDS)
DERIVED_GETTER = attrgetter(*DERIVED_FIELDS)


def _names(columns) -> str:
    return ", ".join(column.key for column in columns)


EVENT_SELECT = f"SELECT {_names(EVENT_COLUMNS)} FROM payment_events"
STATE_SELECT = f"SELECT {_names(STATE_COLUMNS)} FROM donations WHERE id IN "


class _FoldDriver(Driver):
    """The driver plus the fold's two row shapes."""

    def events(self, rows: list[tuple]) -> list[FoldEvent]:
        """payment_events rows (EVENT_COLUMNS order) -> FoldEvents. On SQLite, parsing the stored text with
        its zone appended gives the aware datetime in one C call, faster than parse-then-replace."""
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


class Rows:
    """What every role of SqlFoldStore works on: the session, its connection, and the raw driver on it."""

    session: Session
    connection: Connection
    raw: _FoldDriver
