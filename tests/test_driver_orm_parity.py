"""The raw driver (pipeline.store.driver.Driver) and the ORM (pipeline.models' column types) read and write
the same Python values for the same rows, on SQLite and MariaDB: one definition of each conversion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import select

from pipeline.db import transaction
from pipeline.models import Donation
from pipeline.store.driver import Driver

EAT = timezone(timedelta(hours=3))
ROWS = [
    # amount, created_at, completed_at, needs_check
    (Decimal("25000.00"), datetime(2026, 1, 14, 9, 30, tzinfo=UTC), None, False),
    (Decimal("0.01"), datetime(2026, 1, 14, 9, 30, 0, 123456, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC), True),
    (
        Decimal("999999999999.99"),
        datetime(2026, 1, 14, 12, 30, 0, 1, tzinfo=EAT),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        False,
    ),
    (
        Decimal("12.5"),
        datetime(2030, 6, 30, 23, 59, 59, tzinfo=EAT),
        datetime(2026, 3, 1, 0, 0, 0, 500000, tzinfo=EAT),
        True,
    ),
]
COLUMNS = ("amount", "patient_amount", "support_amount", "created_at", "completed_at", "needs_check")


def _donation(amount, created_at, completed_at, needs_check, **extra) -> Donation:
    return Donation(
        amount=amount,
        currency="TZS",
        patient_amount=amount,
        support_amount=Decimal("0"),
        charge_amount=amount,
        charge_currency="TZS",
        created_at=created_at,
        completed_at=completed_at,
        needs_check=needs_check,
        **extra,
    )


def _orm_values(engine) -> list[tuple]:
    with transaction(engine) as session:
        donations = session.scalars(select(Donation).order_by(Donation.id)).all()
        return [tuple(getattr(donation, column) for column in COLUMNS) for donation in donations]


def _driver_values(engine) -> list[tuple]:
    with transaction(engine) as session:
        raw = Driver(session.connection())
        rows = raw.fetch(f"SELECT {', '.join(COLUMNS)} FROM donations ORDER BY id")
        return [
            (raw.money(a), raw.money(p), raw.money(s), raw.when(c), raw.when(done), raw.flag(check))
            for a, p, s, c, done, check in rows
        ]


def _same(left: list[tuple], right: list[tuple]) -> None:
    assert left == right
    for a, b in zip(left, right, strict=True):  # equal is not enough: same types, same exponent, same zone
        assert [type(v) for v in a] == [type(v) for v in b]
        assert [str(v) for v in a] == [str(v) for v in b]


def test_rows_written_by_the_orm_read_the_same_through_the_driver(backend):
    with transaction(backend.engine) as session:
        session.add_all(_donation(*row) for row in ROWS)
    orm = _orm_values(backend.engine)
    _same(_driver_values(backend.engine), orm)
    assert orm[0][0] == Decimal("25000.00") and str(orm[3][0]) == "12.50"
    assert orm[2][3] == datetime(2026, 1, 14, 9, 30, 0, 1, tzinfo=UTC) and orm[2][3].tzinfo is UTC
    assert orm[1][5] is True and orm[0][5] is False and orm[0][4] is None


def test_rows_written_through_the_driver_read_the_same_as_rows_written_by_the_orm(backend):
    with transaction(backend.engine) as session:
        session.add_all(_donation(*row) for row in ROWS)
    with transaction(backend.engine) as session:
        raw = Driver(session.connection())
        marks = ", ".join([raw.mark] * 8)
        raw.many(
            f"INSERT INTO donations (amount, currency, patient_amount, support_amount, charge_amount, charge_currency,"
            f" created_at, completed_at) VALUES ({marks})",
            [
                (
                    raw.bind_money(amount),
                    "TZS",
                    raw.bind_money(amount),
                    raw.bind_money(Decimal("0")),
                    raw.bind_money(amount),
                    "TZS",
                    raw.bind_when(created),
                    raw.bind_when(completed),
                )
                for amount, created, completed, _ in ROWS
            ],
        )
        ids = [row[0] for row in raw.fetch("SELECT id FROM donations ORDER BY id")][len(ROWS) :]
        raw.update_rows("donations", ("needs_check",), [(int(row[3]), id_) for row, id_ in zip(ROWS, ids, strict=True)])
    orm = _orm_values(backend.engine)
    _same(orm[len(ROWS) :], orm[: len(ROWS)])
    _same(_driver_values(backend.engine), orm)


@pytest.mark.parametrize(("value", "error"), [(1.5, TypeError), ("x", Exception)])
def test_the_driver_refuses_what_the_orm_refuses(backend, value, error):
    with transaction(backend.engine) as session:
        raw = Driver(session.connection())
        with pytest.raises(error):
            raw.bind_money(value)
        with pytest.raises(ValueError, match="naive datetime"):
            raw.bind_when(datetime(2026, 1, 1))
