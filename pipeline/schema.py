"""Schema management: Alembic upgrade to head (idempotent), and the model/migration comparison used by tests."""

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

VERSION_TABLE = "alembic_version"

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return config


def owned_tables() -> set[str]:
    """Every table the migrations create, the version table included."""
    return set(metadata.tables) | {VERSION_TABLE}


def foreign_tables(engine: Engine) -> list[str]:
    """Tables in the way of a first `init`: names the migrations would create that already exist in a
    database azamrecon has never migrated (no version table, or one holding a revision that is not ours).
    Empty for an empty database and for one of ours at any revision."""
    known = {script.revision for script in ScriptDirectory.from_config(alembic_config(engine)).walk_revisions()}
    with translated(), engine.connect() as connection:
        existing = set(inspect(connection).get_table_names())
        revision = MigrationContext.configure(connection).get_current_revision() if VERSION_TABLE in existing else None
    if revision in known:
        return []
    return sorted(existing & owned_tables())


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate to `revision`. A database holding tables of the same names that azamrecon did not create is
    refused before anything is created: MariaDB commits each CREATE TABLE at once, so a collision found
    half-way would leave half a schema behind."""
    clashes = foreign_tables(engine)
    if clashes:
        raise ConfigError(
            f"database {engine.url.render_as_string(hide_password=True)} already has table(s) azamrecon would "
            f"create and did not: {', '.join(clashes)}; nothing was created (use a database of azamrecon's own)"
        )
    config = alembic_config(engine)
    with translated(), engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def schema_differences(engine: Engine) -> list:
    """Differences between the live schema and the models (empty when migrations match the models)."""
    with translated(), engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, metadata)


def current_revision(engine: Engine) -> str | None:
    with translated(), engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
