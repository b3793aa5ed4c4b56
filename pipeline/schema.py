"""Schema management: Alembic upgrade to head (idempotent), and the model/migration comparison used by tests."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine

from pipeline.db import translated
from pipeline.models import metadata

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
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
