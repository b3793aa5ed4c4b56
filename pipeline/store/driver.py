"""Raw DBAPI statements on a session's own connection, for the hot paths (fold batches, the receiver's
group commit), with the conversions SQLAlchemy's column types would apply done once per value."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Iterator, Sequence

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

IN_CHUNK = 900  # stays under SQLite's bound-parameter limit on old builds

UTC = timezone.utc
CENT = Decimal("0.01")


class Driver:
    """Statements on the DBAPI connection of the session's own transaction (same connection,
    same transaction, same lock), with the conversions SQLAlchemy's types would apply done here once:

    - SQLite: datetimes stored as naive UTC text 'YYYY-MM-DD HH:MM:SS.ffffff' (SQLAlchemy's DATETIME
      format), money as integer cents (pipeline.models.Money), booleans as 0/1;
    - MySQL: naive UTC datetimes, money as DECIMAL(14,2), booleans as 0/1.

    Reads give aware UTC datetimes, Decimal money quantized to cents and bools, exactly what the ORM
    columns give. Driver errors are raised as SQLAlchemy's DBAPIError, so pipeline.db.transaction
    translates them as before (a lost MySQL connection is invalidated and reported unreachable).
    SQLAlchemy's per-row parameter and result processing and its IN-list compilation were most of a
    rebuild's time, and a fifth of the receiver's group-commit writer."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.dialect = connection.dialect
        self.sqlite = self.dialect.name == "sqlite"
        self.mark = "?" if self.sqlite else "%s"
        self._money_cache: dict[Any, Decimal | None] = {None: None}

    # -- execution ------------------------------------------------------------------------------
    def _cursor(self):
        return self.connection.connection.driver_connection.cursor()

    def _fail(self, exc: Exception, sql: str, params: Any, many: bool) -> DBAPIError:
        disconnect = self.dialect.is_disconnect(exc, self.connection.connection.driver_connection, None)
        if disconnect:
            self.connection.invalidate(exc)
        return DBAPIError.instance(sql, params, exc, self.dialect.loaded_dbapi.Error, hide_parameters=True,
                                   connection_invalidated=disconnect, dialect=self.dialect, ismulti=many)

    def fetch(self, sql: str, params: Sequence = ()) -> list[tuple]:
        cursor = self._cursor()
        try:
            cursor.execute(sql, tuple(params))
            return cursor.fetchall()
        except self.dialect.loaded_dbapi.Error as exc:
            raise self._fail(exc, sql, params, False) from exc
        finally:
            cursor.close()

    def many(self, sql: str, rows: Sequence[Sequence]) -> None:
        if not rows:
            return
        cursor = self._cursor()
        try:
            cursor.executemany(sql, rows)
        except self.dialect.loaded_dbapi.Error as exc:
            raise self._fail(exc, sql, rows, True) from exc
        finally:
            cursor.close()

    def marks(self, count: int) -> str:
        return "(" + ", ".join([self.mark] * count) + ")"

    def fetch_in(self, sql_before_in: str, values: Sequence, sql_after_in: str = "", params_before: Sequence = ()) -> list[tuple]:
        """`sql_before_in (?, ?, ...) sql_after_in` per chunk of values; rows of every chunk."""
        rows: list[tuple] = []
        for part in chunks(values):
            rows.extend(self.fetch(f"{sql_before_in}{self.marks(len(part))}{sql_after_in}", (*params_before, *part)))
        return rows

    # -- conversions (reads) --------------------------------------------------------------------
    def money(self, value: Any) -> Decimal | None:
        """Storage -> Decimal, as pipeline.models.Money.process_result_value (cached: amounts repeat)."""
        try:
            return self._money_cache[value]
        except KeyError:
            pass
        converted = (Decimal(value) / 100).quantize(CENT) if self.sqlite else Decimal(value).quantize(CENT)
        if len(self._money_cache) < 100_000:
            self._money_cache[value] = converted
        return converted

    def when(self, value: Any) -> datetime | None:
        """Storage -> aware UTC datetime, as pipeline.models.UTCDateTime.process_result_value."""
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC)

    # -- conversions (writes) -------------------------------------------------------------------
    def bind_when(self, value: datetime | None) -> Any:
        """Aware datetime -> storage, as UTCDateTime.process_bind_param then SQLAlchemy's DATETIME."""
        if value is None:
            return None
        if value.tzinfo is not UTC:
            if value.tzinfo is None:
                raise ValueError("naive datetime given where UTC is required")
            value = value.astimezone(UTC)
        if self.sqlite:
            return value.isoformat(" ", "microseconds")[:26]  # drops the '+00:00' that UTC always prints
        return value.replace(tzinfo=None)

    def bind_money(self, value: Any) -> Any:
        """Decimal -> storage, as pipeline.models.Money.process_bind_param."""
        if value is None:
            return None
        if isinstance(value, float):
            raise TypeError("money must be Decimal, not float")
        value = Decimal(value).quantize(CENT)
        return int(value * 100) if self.sqlite else value


def chunks(items: Sequence, size: int = IN_CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
