"""Alembic environment: runs against the connection handed in by pipeline.schema, or the configured URL."""

from alembic import context

from pipeline.models import metadata
from pipeline.table_names import VERSION_TABLE, prefix_of, prefixed

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        from pipeline.db import make_engine
        from pipeline.sections import DatabaseConfig

        database = DatabaseConfig(
            url=config.get_main_option("sqlalchemy.url"), table_prefix=config.get_main_option("table_prefix") or ""
        )
        engine = make_engine(database)
        with engine.begin() as connection:
            _run(connection)
        engine.dispose()
    else:
        _run(connection)


def _run(connection) -> None:
    # the version table is named by Alembic, not by a statement of ours: the table prefix is applied here
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        compare_type=True,
        version_table=prefixed(prefix_of(connection), VERSION_TABLE),
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `azamrecon init`")
run_migrations_online()
