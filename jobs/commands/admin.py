"""azamrecon init."""
from __future__ import annotations

import click

from jobs.commands.common import Context, pass_context


@click.command()
@pass_context
def init(ctx: Context) -> None:
    """Create or upgrade the database schema to the latest migration (idempotent)."""
    from pipeline.schema import current_revision, upgrade

    before = current_revision(ctx.engine)
    upgrade(ctx.engine)
    after = current_revision(ctx.engine)
    state = "already at" if before == after else f"upgraded {before or 'empty'} ->"
    click.echo(f"database {ctx.engine.url.render_as_string(hide_password=True)}: {state} revision {after}")


COMMANDS = [init]
