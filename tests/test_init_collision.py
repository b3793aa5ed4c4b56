"""`init` on a database that already holds tables of the names it would create, which it did not create
(a portal's database, say): one line, and nothing created, on SQLite and on MariaDB."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from pipeline.config import Config
from pipeline.db import make_engine
from pipeline.errors import ConfigError
from pipeline.schema import VERSION_TABLE, current_revision, foreign_tables, owned_tables, upgrade
from tests.conftest import empty_database_url
from tests.servers import run_cli, write_config


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def empty_database(request, tmp_path):
    url = empty_database_url(request.param, tmp_path, "collision")
    engine = make_engine(Config().database.model_copy(update={"url": url}))
    yield url, engine
    engine.dispose()


def _tables(engine) -> set[str]:
    with engine.connect() as connection:
        return set(inspect(connection).get_table_names())


def test_init_refuses_a_table_it_did_not_create_and_creates_nothing(empty_database, tmp_path):
    url, engine = empty_database
    with engine.begin() as connection:  # someone else's `patients` and an unrelated table
        connection.execute(text("CREATE TABLE patients (id INTEGER PRIMARY KEY, name VARCHAR(20))"))
        connection.execute(text("CREATE TABLE donor_donation (id INTEGER PRIMARY KEY)"))
    assert foreign_tables(engine) == ["patients"]
    config = write_config(tmp_path / "config.yaml", {"database.url": url, "privacy.key_file": str(tmp_path / "k")})
    done = run_cli("init", config_path=config)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "patients" in done.stderr and "nothing was created" in done.stderr
    assert _tables(engine) == {"patients", "donor_donation"}  # no half schema, no version table
    with pytest.raises(ConfigError, match="patients"):
        upgrade(engine)


def test_a_version_table_that_is_not_ours_is_refused_too(empty_database):
    _url, engine = empty_database
    with engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        connection.execute(text(f"INSERT INTO {VERSION_TABLE} VALUES ('3fa1c0d2e9b7')"))
    assert foreign_tables(engine) == [VERSION_TABLE]
    with pytest.raises(ConfigError, match=VERSION_TABLE):
        upgrade(engine)


def test_beside_unrelated_tables_init_creates_its_own_and_upgrades_again(empty_database):
    _url, engine = empty_database
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE auth_app_patientprofile (id INTEGER PRIMARY KEY)"))
    upgrade(engine)
    assert _tables(engine) == owned_tables() | {"auth_app_patientprofile"}
    revision = current_revision(engine)
    assert foreign_tables(engine) == []  # our own database, at any revision, is never foreign
    upgrade(engine)
    assert current_revision(engine) == revision
