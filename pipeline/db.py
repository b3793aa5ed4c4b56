"""Engine construction and the driver-error boundary.

SQLite runs with WAL, the configured synchronous level (FULL by default), a busy timeout and foreign
keys on. Transactions on SQLite start with BEGIN IMMEDIATE when asked, which is how the fold takes
its single-writer lock there.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from pipeline import table_names
from pipeline.errors import ConfigError, SchemaMissing, StoreConflict, StoreError, StoreLocked, StoreUnavailable
from pipeline.sections import DatabaseConfig

# MySQL error codes that mean "the server is not there" rather than "the query is wrong".
_MYSQL_UNREACHABLE = {2002, 2003, 2006, 2013, 2055, 1040, 1053}
_MYSQL_NO_SUCH_TABLE = 1146
_MYSQL_CONFLICT = {1213, 1205}  # deadlock, lock wait timeout: the server rolled the transaction back
_MYSQL_UNKNOWN_DATABASE = 1049
# A missing table almost always means a database nobody ran the migrations on.
_INIT_HINT = " (run `azamrecon init`)"
# Where the database comes from: said whenever it is not the one expected.
WHERE_TO_SET = "set database.url with --config FILE, DATABASE_URL or --env-file FILE"


def require_existing(config: DatabaseConfig) -> None:
    """Every command but `init` (and `demo`, on its own folder) refuses to create a database: a command run
    without its env file used to create ./azamrecon.db and report "0 completed, invariants OK" from it.
    A missing SQLite file that connecting would create (its directory exists) is a StoreUnavailable naming
    the URL; a missing directory is an outage rather than a default (SQLite cannot create the file there, and
    the receiver must still start and spool), left to fail at connect like a missing MySQL database
    (translate). Checked before anything else is created (log directory, key file, spool)."""
    with _driver_errors(config.url):
        make_url(config.url).get_dialect()  # a bad driver is a config error first, not a missing file
    path = sqlite_file(config.url)
    if path is not None and not Path(path).exists() and Path(path).parent.is_dir():
        raise StoreUnavailable(
            f"database {make_url(config.url).render_as_string(hide_password=True)} does not exist: {WHERE_TO_SET}, "
            "or run `azamrecon init` to create it"
        )


def sqlite_file(url: str) -> str | None:
    """The file of a SQLite URL; None for another backend or an in-memory database."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or "mode=memory" in url:
        return None
    return database[len("file:") :].split("?", 1)[0] if database.startswith("file:") else database


def make_engine(config: DatabaseConfig, *, sqlite_autocheckpoint: bool = True, **kwargs) -> Engine:
    """sqlite_autocheckpoint=False: commits never copy the WAL into the database file; whoever asks for
    that runs a receiver.wal.WalCheckpointer beside the engine (the receiver does). Every engine of the
    product comes from here, so database.table_prefix holds for all of them (_use_table_prefix)."""
    url = config.url
    if url.startswith("sqlite"):
        engine = _create_engine(
            url,
            connect_args={"timeout": config.busy_timeout_ms / 1000, "check_same_thread": False},
            **kwargs,
        )
        _configure_sqlite(engine, config, sqlite_autocheckpoint)
    else:
        if url.startswith("mysql://"):
            url = "mysql+pymysql://" + url[len("mysql://") :]
        options = {"pool_pre_ping": True, "pool_recycle": 3600, "pool_size": config.pool_size}
        if url.startswith("mysql"):
            options["connect_args"] = {"connect_timeout": 5, "charset": "utf8mb4"}
            options["isolation_level"] = "READ COMMITTED"
        options.update(kwargs)
        engine = _create_engine(url, **options)
    _use_table_prefix(engine, config.table_prefix)
    return engine


def _use_table_prefix(engine: Engine, prefix: str) -> None:
    """Every statement the engine sends names azamrecon's tables with the prefix (pipeline.table_names); with
    no prefix nothing is installed, so a standalone database pays nothing."""
    if not prefix:
        return
    database = engine.url.database if engine.dialect.name != "sqlite" else None
    if database in table_names.owned_names():  # its name in SHOW/DESCRIBE statements would be rewritten too
        raise ConfigError(
            f"invalid config value for database.table_prefix: the database is named {database!r}, "
            "like one of azamrecon's tables; a prefix needs a database of another name"
        )
    table_names.register(engine, prefix)
    rewrite = table_names.rewriter(prefix)

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _prefixed(_connection, _cursor, statement, parameters, _context, _executemany):
        return rewrite(statement), parameters


def _create_engine(url: str, **options) -> Engine:
    with _driver_errors(url):
        engine = create_engine(url, **options)
        _check_driver_arguments(engine, options.get("connect_args", {}))
        return engine


@contextlib.contextmanager
def _driver_errors(url: str) -> Iterator[None]:
    # The config validated the backend; the driver named in the URL (mysql+mysqldb://) may still be missing,
    # or unknown to SQLAlchemy (mysql+nodriver://: NoSuchModuleError, an ArgumentError). Messages name the
    # scheme only: the URL may hold the password.
    try:
        yield
    except ImportError as exc:
        raise ConfigError(f"invalid config value for database.url: its driver is not installed: {exc}") from None
    except NoSuchModuleError:
        raise ConfigError(f"invalid config value for database.url: SQLAlchemy has no driver {_scheme(url)!r}") from None
    except TypeError as exc:  # _check_driver_arguments: the message names the argument, never its value
        raise ConfigError(f"invalid config value for database.url: the {_scheme(url)!r} driver {exc}") from None
    except (ArgumentError, ValueError):  # e.g. ?connect_timeout=abc (the message would quote the value)
        raise ConfigError(
            f"invalid config value for database.url: a {_scheme(url)!r} URL with an argument its driver cannot use"
        ) from None


def _scheme(url: str) -> str:
    return url.split(":", 1)[0][:40]


def _check_driver_arguments(engine: Engine, connect_args: dict) -> None:
    """A URL query argument the driver does not take (mysql+pymysql://...?bogus=1) raised TypeError at the
    first connect, past the driver-error boundary: a traceback. Raised here instead, as a TypeError."""
    try:
        signature = inspect.signature(engine.dialect.loaded_dbapi.connect)
    except (TypeError, ValueError):  # a builtin without one (sqlite3; pysqlite drops unknown arguments itself)
        return
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    signature.bind(*cargs, **{**cparams, **connect_args})


def _configure_sqlite(engine: Engine, config: DatabaseConfig, autocheckpoint: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (so BEGIN IMMEDIATE works).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={config.sqlite_synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={int(config.busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        if not autocheckpoint:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection):
        mode = connection.info.pop("sqlite_begin", "BEGIN")
        connection.exec_driver_sql(mode)


def is_sqlite(bind) -> bool:
    return bind.dialect.name == "sqlite"


def translate(exc: BaseException) -> StoreError:
    """Map a driver error to the store's error tree, keeping only the driver's first line."""
    original = getattr(exc, "orig", exc)
    message = str(original).splitlines()[0] if str(original) else type(original).__name__
    code = original.args[0] if getattr(original, "args", None) and isinstance(original.args[0], int) else None
    if code == _MYSQL_NO_SUCH_TABLE or "no such table" in message:
        return SchemaMissing(f"database error: {message}{_INIT_HINT}")
    if code == _MYSQL_UNKNOWN_DATABASE:  # an unknown database is never created for you: see require_existing
        return StoreUnavailable(
            f"database unreachable: {message} ({WHERE_TO_SET}, or create it and run `azamrecon init`)"
        )
    if isinstance(exc, OperationalError) and (code in _MYSQL_UNREACHABLE or "unable to open database" in message):
        return StoreUnavailable(f"database unreachable: {message}")
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return StoreUnavailable(f"database unreachable: {message}")
    if code in _MYSQL_CONFLICT:
        return StoreConflict(f"database conflict: {message}")
    if "database is locked" in message:  # SQLite's busy timeout ran out
        return StoreLocked(f"database error: {message}")
    return StoreError(f"database error: {message}")


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Driver errors raised inside the block leave it translated, for work outside transaction()."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise translate(exc) from exc


@contextlib.contextmanager
def transaction(engine: Engine, immediate: bool = False, isolation: str | None = None) -> Iterator[Session]:
    """`with transaction(engine) as session:` commits on success, rolls back on error, translates driver errors.

    Store functions take this session and never commit; the entry points open transactions (the jobs, the
    receiver's group-commit writer, checkout and the status check).
    immediate=True takes SQLite's write lock at BEGIN (BEGIN IMMEDIATE), so two writers serialise at
    the start of the transaction instead of one failing at its first write. isolation (MySQL) e.g.
    "REPEATABLE READ" gives a read-only job one consistent snapshot; SQLite transactions already are.
    """
    try:
        with engine.connect() as connection:
            if isolation and not is_sqlite(engine):
                connection = connection.execution_options(isolation_level=isolation)
            if immediate and is_sqlite(engine):
                connection.info["sqlite_begin"] = "BEGIN IMMEDIATE"
            with connection.begin():
                with Session(bind=connection, expire_on_commit=False, autoflush=False) as session:
                    yield session
                    session.flush()
    except SQLAlchemyError as exc:
        raise translate(exc) from exc
