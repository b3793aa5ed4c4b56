"""Shared fixtures. `backend` runs a test once on a real SQLite file and once on a real MariaDB/MySQL.

MariaDB: AZAMRECON_TEST_MYSQL_URL (default mysql+pymysql://root@127.0.0.1:3306) and
AZAMRECON_TEST_MYSQL_DB (default azamrecon_test; the database is dropped and recreated per session).
Without a reachable server the MySQL variants skip with the reason, except when CI=true or
AZAMRECON_REQUIRE_MYSQL=1, where they fail: CI must never silently skip them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from pipeline.config import Config, load_config
from pipeline.db import make_engine
from pipeline.schema import upgrade

pytest_plugins = ["tests.portal_fixtures"]

FIXTURES = Path(__file__).parent / "fixtures" / "azampay"
SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "azampay"
MYSQL_SERVER = os.environ.get("AZAMRECON_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306")
MYSQL_DB = os.environ.get("AZAMRECON_TEST_MYSQL_DB", "azamrecon_test")
MYSQL_REQUIRED = os.environ.get("CI", "").lower() == "true" or os.environ.get("AZAMRECON_REQUIRE_MYSQL") == "1"

TABLES = (
    "funding_credits",
    "anomalies",
    "payment_events",
    "donations",
    "patients",
    "fold_checkpoints",
    "job_runs",
    "job_locks",
    "donation_events",
    "waiting_keys",
    "event_counts",
    "privacy_control",
    "privacy_rewrites",
    "portal_donations",
    "portal_patients",
    "portal_sync",
)


def fixture_bytes(name: str) -> bytes:
    """A recorded AzamPay payload, byte-exact."""
    path = FIXTURES / name
    if not path.exists():
        path = SHARED_FIXTURES / name
    return path.read_bytes()


@dataclass
class Backend:
    name: str
    url: str
    engine: Engine
    tmp_path: Path
    overrides: dict = field(default_factory=dict)

    def config(self, **overrides) -> Config:
        """A Config for this backend; overrides are dotted keys, e.g. {"webhook.password": "pw"}."""
        values = {
            "database.url": self.url,
            "logging.dir": str(self.tmp_path / "logs"),
            "receiver.spool_dir": str(self.tmp_path / "spool"),
            "privacy.key_file": str(self.tmp_path / "azamrecon.key"),
        }
        values.update(self.overrides)
        values.update(overrides)
        path = self.tmp_path / "config.yaml"
        if not path.exists():
            path.write_text("{}\n")
        return load_config(path, environ={}, overrides=values)

    def scalar(self, sql: str, **params):
        with self.engine.connect() as connection:
            return connection.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params) -> list:
        with self.engine.connect() as connection:
            return list(connection.execute(text(sql), params))


_mysql_state: dict = {}


def unreachable(exc: Exception) -> Exception:
    """The skip (fail when CI=true or AZAMRECON_REQUIRE_MYSQL=1) for a MariaDB server that cannot be reached."""
    reason = f"MariaDB/MySQL not reachable at {MYSQL_SERVER} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    return pytest.fail.Exception(reason) if MYSQL_REQUIRED else pytest.skip.Exception(reason)


def _mysql_ready() -> str:
    """Create the test database once per session; return its URL or raise pytest's skip/fail."""
    if "url" in _mysql_state:
        return _mysql_state["url"]
    if "error" in _mysql_state:
        raise _mysql_state["error"]
    try:
        admin = create_engine(MYSQL_SERVER.rstrip("/") + "/", connect_args={"connect_timeout": 3})
        with admin.begin() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS `{MYSQL_DB}`"))
            connection.execute(text(f"CREATE DATABASE `{MYSQL_DB}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
        admin.dispose()
        url = MYSQL_SERVER.rstrip("/") + f"/{MYSQL_DB}"
        engine = make_engine(Config().database.model_copy(update={"url": url}))
        upgrade(engine)
        engine.dispose()
    except Exception as exc:  # any failure to reach the server
        _mysql_state["error"] = unreachable(exc)
        raise _mysql_state["error"] from exc
    _mysql_state["url"] = url
    return url


def empty_database_url(kind: str, tmp_path: Path, name: str) -> str:
    """A new, empty database of its own: a SQLite file in tmp_path, or a MySQL database `<test db>_<name>`
    created afresh (for migrations and `init` on a database that is not the session's)."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / (name + '.db')}"
    _mysql_ready()
    database = f"{MYSQL_DB}_{name}"
    admin = create_engine(MYSQL_SERVER.rstrip("/") + "/")
    with admin.begin() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS `{database}`"))
        connection.execute(text(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
    admin.dispose()
    return f"{MYSQL_SERVER.rstrip('/')}/{database}"


def _truncate_mysql(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("SET FOREIGN_KEY_CHECKS=0"))
        for table in TABLES:
            connection.execute(text(f"TRUNCATE TABLE {table}"))
        connection.execute(text("SET FOREIGN_KEY_CHECKS=1"))


def _make_backend(name: str, tmp_path: Path) -> Backend:
    if name == "sqlite":
        url = f"sqlite:///{tmp_path / 'azamrecon.db'}"
        engine = make_engine(Config().database.model_copy(update={"url": url}))
        upgrade(engine)
    else:
        url = _mysql_ready()
        engine = make_engine(Config().database.model_copy(update={"url": url}))
        _truncate_mysql(engine)
    return Backend(name=name, url=url, engine=engine, tmp_path=tmp_path)


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def backend(request, tmp_path) -> Backend:
    """A migrated, empty database: a fresh SQLite file, or the MariaDB test database truncated."""
    made = _make_backend(request.param, tmp_path)
    yield made
    made.engine.dispose()


@pytest.fixture
def sqlite_backend(tmp_path) -> Backend:
    made = _make_backend("sqlite", tmp_path)
    yield made
    made.engine.dispose()


@pytest.fixture
def mysql_backend(tmp_path) -> Backend:
    made = _make_backend("mysql", tmp_path)
    yield made
    made.engine.dispose()


@pytest.fixture
def now() -> datetime:
    return datetime(2026, 1, 14, 9, 30, 0, tzinfo=UTC)


def pytest_addoption(parser):
    # Used by tests/reliability (longer fault-injection runs); a sub-directory conftest cannot add options.
    parser.addoption("--long", action="store_true", default=False, help="run the long variants of tests/reliability")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skipped MySQL test is a failure: the MariaDB variants must run there, not vanish."""
    outcome = yield
    report = outcome.get_result()
    if MYSQL_REQUIRED and report.skipped and item.get_closest_marker("mysql") is not None:
        report.outcome = "failed"
        report.longrepr = f"MySQL test skipped while CI requires MariaDB: {report.longrepr}"
