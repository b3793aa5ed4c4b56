"""pytest plugin: `portal_db`, the Django portal's two tables (donor_donation, auth_app_patientprofile) made by
the portal's own migrations (tests/portal_django), fresh for every test, on SQLite and on MariaDB.

Django's settings are process-wide, so the first use configures three aliases for the whole session:
"default" (an unmigrated in-memory SQLite: a helper that forgets `.using()` fails loudly), "sqlite" and
"mysql" (AZAMRECON_TEST_MYSQL_URL's server, database AZAMRECON_TEST_PORTAL_DB, default azamrecon_portal_test).

Fresh per test:
- SQLite: migrated once into a template file; each test gets a copy in its tmp_path, and the alias's NAME is
  pointed at it (what Django's own test runner does with settings_dict["NAME"]).
- MariaDB: the database is created if missing, emptied and migrated once per session; before each test every
  trigger, view and table other than the two portal tables and django_migrations is dropped (azamrecon's, under
  any prefix) and the two portal tables are truncated. Should a test have changed their definitions, they are
  dropped and migrated again.
The MariaDB variants skip without a server, and fail instead when CI=true (tests/conftest.py's rule).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import MYSQL_SERVER, unreachable

PORTAL_TABLES = ("auth_app_patientprofile", "donor_donation")
KEPT_TABLES = (*PORTAL_TABLES, "django_migrations")
PORTAL_DB = os.environ.get("AZAMRECON_TEST_PORTAL_DB", "azamrecon_portal_test")

_state: dict = {}


def _databases(session_dir: Path) -> dict:
    server = make_url(MYSQL_SERVER)
    return {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        "sqlite": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(session_dir / "template.sqlite3")},
        "mysql": {
            "ENGINE": "django.db.backends.mysql",
            "NAME": PORTAL_DB,
            "USER": server.username or "root",
            "PASSWORD": server.password or "",
            "HOST": server.host or "127.0.0.1",
            "PORT": str(server.port or 3306),
            "OPTIONS": {"connect_timeout": 3},
        },
    }


def _configure(tmp_path_factory) -> None:
    if "configured" in _state:
        return
    from tests.portal_django import setup

    session_dir = tmp_path_factory.mktemp("portal_django")
    setup(_databases(session_dir))
    _state["configured"] = True


def _migrate(alias: str) -> None:
    from django.core.management import call_command

    call_command("migrate", database=alias, verbosity=0, interactive=False)


def _sqlite_template() -> Path:
    """The migrated template file, made on first use."""
    if "sqlite_template" not in _state:
        from django.db import connections

        template = Path(connections["sqlite"].settings_dict["NAME"])
        _migrate("sqlite")
        connections["sqlite"].close()
        _state["sqlite_template"] = template
    return _state["sqlite_template"]


def _fresh_sqlite(tmp_path: Path) -> Path:
    from django.db import connections

    template = _sqlite_template()
    connection = connections["sqlite"]
    connection.close()
    path = tmp_path / "portal.sqlite3"
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        leftover.unlink(missing_ok=True)
    shutil.copyfile(template, path)
    connection.settings_dict["NAME"] = str(path)
    return path


def _mysql_execute(*statements: str) -> list:
    from django.db import connections

    with connections["mysql"].cursor() as cursor:
        rows = []
        for statement in statements:
            cursor.execute(statement)
            rows = list(cursor.fetchall()) if cursor.description else []
        return rows


def _mysql_drop_all_but(kept: tuple[str, ...]) -> None:
    """Drop every trigger, view and table of the portal database but `kept`, foreign keys unchecked."""
    statements = [f"DROP TRIGGER IF EXISTS `{row[0]}`" for row in _mysql_execute("SHOW TRIGGERS")]
    for name, kind in _mysql_execute("SHOW FULL TABLES"):
        if name not in kept:
            statements.append(f"DROP {'VIEW' if kind == 'VIEW' else 'TABLE'} IF EXISTS `{name}`")
    if statements:
        _mysql_execute("SET FOREIGN_KEY_CHECKS=0", *statements, "SET FOREIGN_KEY_CHECKS=1")


def _mysql_ready() -> None:
    """Create (if missing), empty and migrate the portal database once per session; skip/fail as conftest."""
    if "mysql_pristine" in _state:
        return
    if "mysql_error" in _state:
        raise _state["mysql_error"]
    from sqlalchemy import create_engine, text

    try:
        admin = create_engine(MYSQL_SERVER.rstrip("/") + "/", connect_args={"connect_timeout": 3})
        with admin.begin() as connection:
            connection.execute(text(f"CREATE DATABASE IF NOT EXISTS `{PORTAL_DB}` CHARACTER SET utf8mb4"))
        admin.dispose()
    except Exception as exc:  # any failure to reach the server
        _state["mysql_error"] = unreachable(exc)
        raise _state["mysql_error"] from exc
    _mysql_drop_all_but(())
    _migrate("mysql")
    _state["mysql_pristine"] = _show_create("mysql", "mysql")


def _fresh_mysql() -> None:
    from django.db import connections

    _mysql_ready()
    connections["mysql"].close()
    _mysql_drop_all_but(KEPT_TABLES)
    if _show_create("mysql", "mysql") != _state["mysql_pristine"]:  # a test altered them: rebuild
        _mysql_drop_all_but(())
        _migrate("mysql")
    else:
        truncates = [f"TRUNCATE TABLE `{table}`" for table in PORTAL_TABLES]
        _mysql_execute("SET FOREIGN_KEY_CHECKS=0", *truncates, "SET FOREIGN_KEY_CHECKS=1")
    connections["mysql"].close()


def _show_create(alias: str, kind: str) -> dict[str, str]:
    from django.db import connections

    with connections[alias].cursor() as cursor:
        created = {}
        for table in PORTAL_TABLES:
            if kind == "mysql":
                cursor.execute(f"SHOW CREATE TABLE `{table}`")
                created[table] = re.sub(r" AUTO_INCREMENT=\d+", "", cursor.fetchone()[1])
            else:
                cursor.execute(
                    "SELECT sql FROM sqlite_master WHERE tbl_name = %s AND sql IS NOT NULL ORDER BY type DESC, name",
                    [table],
                )
                created[table] = ";\n".join(row[0] for row in cursor.fetchall())
        return created


def show_create(portal_db) -> dict[str, str]:
    """{table: its CREATE TABLE text} for both portal tables: SHOW CREATE TABLE on MariaDB (the AUTO_INCREMENT
    counter left out: rows move it, the definition does not), sqlite_master's CREATE TABLE followed by its
    CREATE INDEX statements on SQLite. For before/after comparisons."""
    return _show_create(portal_db.alias, portal_db.kind)


def _make_portal_db(kind: str, tmp_path: Path):
    from tests.portal_django.portal import PortalDB

    if kind == "sqlite":
        path = _fresh_sqlite(tmp_path)
        return PortalDB(
            alias="sqlite", url=f"sqlite:///{path}", kind=kind, path=path, _reset=lambda: _fresh_sqlite(tmp_path)
        )
    _fresh_mysql()
    return PortalDB(alias="mysql", url=f"{MYSQL_SERVER.rstrip('/')}/{PORTAL_DB}", kind=kind, _reset=_fresh_mysql)


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def portal_db(request, tmp_path, tmp_path_factory):
    """A fresh portal database with the portal's two tables, migrated by Django: a PortalDB
    (tests/portal_django/portal.py) with .alias, .url, .kind and the portal's code paths as methods."""
    from django.db import connections

    _configure(tmp_path_factory)
    made = _make_portal_db(request.param, tmp_path)
    yield made
    connections[made.alias].close()
