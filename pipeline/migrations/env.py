"""Alembic environment: runs against the connection handed in by pipeline.schema, or the configured URL."""

from alembic import context

from pipeline.models import metadata

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        from pipeline.db import make_engine
        from pipeline.sections import DatabaseConfig

        engine = make_engine(DatabaseConfig(url=config.get_main_option("sqlalchemy.url")))
        with engine.begin() as connection:
            _run(connection)
        engine.dispose()
    else:
        _run(connection)


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `azamrecon init`")
run_migrations_online()
