"""Schema management: Alembic upgrade to head (idempotent), and the model/migration comparison used by tests.

Names here are the database's own: with database.table_prefix they carry the prefix (pipeline.table_names)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from pipeline.db import translated
from pipeline.errors import ConfigError
from pipeline.models import metadata
from pipeline.table_names import VERSION_TABLE, owned_names, prefix_of, prefixed

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    config.set_main_option("table_prefix", prefix_of(engine))  # env.py's version table (and engine, if it makes one)
    return config


def version_table(engine: Engine) -> str:
    """The Alembic version table's name in this engine's database."""
    return prefixed(prefix_of(engine), VERSION_TABLE)


def owned_tables(engine: Engine | None = None) -> set[str]:
    """Every table the migrations create, the version table included, named as in this engine's database
    (with its table prefix); plain names without an engine."""
    prefix = prefix_of(engine) if engine is not None else ""
    return {prefixed(prefix, name) for name in owned_names()}


def _migration_context(connection, **opts) -> MigrationContext:
    return MigrationContext.configure(connection, opts={"version_table": version_table(connection.engine), **opts})


def foreign_tables(engine: Engine) -> list[str]:
    """Tables in the way of a first `init`: names the migrations would create (with the table prefix) that
    already exist in a database azamrecon has never migrated (no version table, or one holding a revision that
    is not ours). Empty for an empty database and for one of ours at any revision."""
    return _in_the_way(engine)[0]


# Besides tables, the names one database holds once: triggers and indexes on SQLite, triggers and foreign keys
# on MariaDB. They keep their plain names under a table prefix (pipeline.table_names), so an azamrecon schema of
# another prefix in the same database would stop a first `init` half-way on them. The migrations' triggers:
TRIGGERS = ("payment_events_no_update", "payment_events_no_delete", "payment_events_update_guard")


def _in_the_way(engine: Engine) -> tuple[list[str], list[str]]:
    """(foreign tables, other names in the way, each with its kind) of a first `init`; both empty for a database
    of ours at any revision."""
    known = {script.revision for script in ScriptDirectory.from_config(alembic_config(engine)).walk_revisions()}
    with translated(), engine.connect() as connection:
        existing = set(inspect(connection).get_table_names())  # the database's own names
        ours = version_table(engine) in existing
        revision = _migration_context(connection).get_current_revision() if ours else None
        if revision in known:
            return [], []
        others = _database_wide_names(connection)
    named = sorted(others, key=lambda name: (others[name] != "trigger", others[name], name))  # triggers first
    return sorted(existing & owned_tables(engine)), [f"{others[name]} {name}" for name in named]


def _database_wide_names(connection) -> dict[str, str]:
    """name -> kind of every name the migrations would create besides tables that this database holds already."""
    ours = {index.name: "index" for table in metadata.tables.values() for index in table.indexes}
    ours.update({fk.name: "foreign key" for table in metadata.tables.values() for fk in table.foreign_key_constraints})
    ours.update(dict.fromkeys(TRIGGERS, "trigger"))
    if connection.dialect.name == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE type IN ('index', 'trigger')"
    else:  # index names are per table on MariaDB
        sql = (
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() UNION "
            "SELECT CONSTRAINT_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE()"
        )
    existing = {name for (name,) in connection.exec_driver_sql(sql)}
    return {name: kind for name, kind in ours.items() if name in existing}


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to `revision`. A database holding tables of the same names that azamrecon did not create, or
    another name the migrations would create (a trigger, ...), is refused before anything is created: MariaDB
    commits each CREATE at once, so a collision found half-way would leave half a schema behind."""
    tables, others = _in_the_way(engine)
    if tables or others:
        # a prefix renames tables only: past another application's tables, not past another azamrecon schema
        remedy = "use a database of azamrecon's own" + ("" if others else ", or another database.table_prefix")
        raise ConfigError(
            f"database {engine.url.render_as_string(hide_password=True)} already has "
            f"{'names' if others else 'table(s)'} azamrecon would create and did not: {_listed(tables + others)}; "
            f"nothing was created ({remedy})"
        )
    config = alembic_config(engine)
    with translated(), engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def _listed(names: list[str], shown: int = 6) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def schema_differences(engine: Engine) -> list:
    """Differences between the live schema and the models (empty when migrations match the models). The
    models name tables without a prefix, so this compares an engine without one: a prefixed schema is the
    same statements renamed (tests/test_table_prefix.py compares the two)."""
    if prefix_of(engine):
        raise ValueError("schema_differences compares a database without a table prefix")
    with translated(), engine.connect() as connection:
        return compare_metadata(_migration_context(connection, compare_type=True), metadata)


def current_revision(engine: Engine) -> str | None:
    with translated(), engine.connect() as connection:
        return _migration_context(connection).get_current_revision()
