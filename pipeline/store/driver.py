"""Raw DBAPI statements on a session's own connection, for the hot paths (fold batches, the receiver's
group commit), with the conversions SQLAlchemy's column types would apply done once per value."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Boolean
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from pipeline.models import money_from_db, money_to_db, utc_from_db, utc_to_db
from pipeline.table_names import prefix_of, rewriter

IN_CHUNK = 900  # stays under SQLite's bound-parameter limit on old builds


class Driver:
    """Statements on the DBAPI connection of the session's own transaction (same connection,
    same transaction, same lock), with the conversions SQLAlchemy's types would apply done here once:

    - SQLite: datetimes stored as naive UTC text 'YYYY-MM-DD HH:MM:SS.ffffff' (SQLAlchemy's DATETIME
      format), money as integer cents (pipeline.models.Money), booleans as 0/1;
    - MySQL: naive UTC datetimes, money as DECIMAL(14,2), booleans as 0/1.

    Reads give aware UTC datetimes, Decimal money quantized to cents and bools, exactly what the ORM
    columns give. Driver errors are raised as SQLAlchemy's DBAPIError, so pipeline.db.transaction
    translates them as before (a lost MySQL connection is invalidated and reported unreachable).
    SQLAlchemy's per-row parameter and result processing and its IN-list compilation dominated a
    rebuild and weighed on the receiver's group-commit writer (bench/RESULTS.md)."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.dialect = connection.dialect
        self.sqlite = self.dialect.name == "sqlite"
        self.mark = "?" if self.sqlite else "%s"
        # these statements skip SQLAlchemy's cursor events, so database.table_prefix is applied here
        self.prefixed = rewriter(prefix_of(connection))
        self._money_cache: dict[Any, Decimal | None] = {None: None}
        # storage -> bool (or None), as the ORM's Boolean columns read it on this backend
        self.flag = Boolean().result_processor(self.dialect, None) or _as_is

    # -- execution ------------------------------------------------------------------------------
    def _cursor(self):
        return self.connection.connection.driver_connection.cursor()

    def _fail(self, exc: Exception, sql: str, params: Any, many: bool) -> DBAPIError:
        disconnect = self.dialect.is_disconnect(exc, self.connection.connection.driver_connection, None)
        if disconnect:
            self.connection.invalidate(exc)
        return DBAPIError.instance(
            sql,
            params,
            exc,
            self.dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=disconnect,
            dialect=self.dialect,
            ismulti=many,
        )

    def fetch(self, sql: str, params: Sequence = ()) -> list[tuple]:
        sql = self.prefixed(sql)
        cursor = self._cursor()
        try:
            cursor.execute(sql, tuple(params))
            return cursor.fetchall()
        except self.dialect.loaded_dbapi.Error as exc:
            raise self._fail(exc, sql, params, False) from exc
        finally:
            cursor.close()

    def many(self, sql: str, rows: Sequence[Sequence]) -> int:
        """executemany; how many rows it changed (an INSERT IGNORE counts only what it inserted)."""
        if not rows:
            return 0
        sql = self.prefixed(sql)
        cursor = self._cursor()
        try:
            cursor.executemany(sql, rows)
            return cursor.rowcount
        except self.dialect.loaded_dbapi.Error as exc:
            raise self._fail(exc, sql, rows, True) from exc
        finally:
            cursor.close()

    def execute(self, sql: str, params: Sequence = ()) -> None:
        self.fetch(sql, params)

    def run(self, sql: str, params: Sequence = ()) -> int:
        """A statement that changes rows; how many it changed."""
        sql = self.prefixed(sql)
        cursor = self._cursor()
        try:
            cursor.execute(sql, tuple(params))
            return cursor.rowcount
        except self.dialect.loaded_dbapi.Error as exc:
            raise self._fail(exc, sql, params, False) from exc
        finally:
            cursor.close()

    def update_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence], key: str = "id") -> None:
        """`UPDATE table SET columns WHERE key = ...` for each row (its values in `columns` order, then its key;
        keys unique). SQLite: executemany, in process. MySQL: PyMySQL's executemany sends one UPDATE per row,
        a round trip each (it folds only INSERT ... VALUES into one statement), which dominated a MariaDB
        fold's writing; so the rows go into a temporary table in one multi-row INSERT, and one UPDATE ... JOIN
        applies them. CREATE and DROP TEMPORARY TABLE do not end the transaction (MySQL's implicit commits
        spare TEMPORARY), and the table is this connection's alone."""
        if not rows:
            return
        if self.sqlite:
            assignments = ", ".join(f"{column} = ?" for column in columns)
            self.many(f"UPDATE {table} SET {assignments} WHERE {key} = ?", rows)
            return
        staged = f"staged_{table}"
        names = ", ".join((*columns, key))
        assignments = ", ".join(f"{table}.{column} = {staged}.{column}" for column in columns)
        self.execute(f"DROP TEMPORARY TABLE IF EXISTS {staged}")  # left behind by a transaction that failed midway
        self.execute(f"CREATE TEMPORARY TABLE {staged} (PRIMARY KEY ({key})) SELECT {names} FROM {table} LIMIT 0")
        self.many(f"INSERT INTO {staged} ({names}) VALUES {self.marks(len(columns) + 1)}", rows)
        self.execute(f"UPDATE {table} JOIN {staged} ON {table}.{key} = {staged}.{key} SET {assignments}")
        self.execute(f"DROP TEMPORARY TABLE {staged}")

    def marks(self, count: int) -> str:
        return "(" + ", ".join([self.mark] * count) + ")"

    def fetch_in(
        self, sql_before_in: str, values: Sequence, sql_after_in: str = "", params_before: Sequence = ()
    ) -> list[tuple]:
        """`sql_before_in (?, ?, ...) sql_after_in` per chunk of values; rows of every chunk."""
        rows: list[tuple] = []
        for part in chunks(values):
            rows.extend(self.fetch(f"{sql_before_in}{self.marks(len(part))}{sql_after_in}", (*params_before, *part)))
        return rows

    # -- conversions: pipeline.models' own (one definition), bound to this backend --------------
    def money(self, value: Any) -> Decimal | None:
        """Storage -> Decimal, as pipeline.models.Money reads it (cached: amounts repeat)."""
        try:
            return self._money_cache[value]
        except KeyError:
            pass
        converted = money_from_db(value, self.sqlite)
        if len(self._money_cache) < 100_000:
            self._money_cache[value] = converted
        return converted

    def when(self, value: Any) -> datetime | None:
        """Storage -> aware UTC datetime, as pipeline.models.UTCDateTime reads it."""
        return utc_from_db(value)

    def bind_when(self, value: datetime | None) -> Any:
        """Aware datetime -> storage, as UTCDateTime then SQLAlchemy's DATETIME write it."""
        value = utc_to_db(value)
        if value is not None and self.sqlite:
            return value.isoformat(" ", "microseconds")  # SQLAlchemy's SQLite DATETIME text
        return value

    def bind_money(self, value: Any) -> Any:
        """Decimal -> storage, as pipeline.models.Money writes it."""
        return money_to_db(value, self.sqlite)


def _as_is(value: Any) -> Any:
    return value


def chunks(items: Sequence, size: int = IN_CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
