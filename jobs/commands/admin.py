"""azamrecon init."""

from __future__ import annotations

import click

from jobs.commands.common import Context, pass_context


@click.command()
@pass_context(creates_database=True)
def init(ctx: Context) -> None:
    """Create or upgrade the database schema to the latest migration (idempotent), and create the
    privacy key file (privacy.key_file, mode 0600) when it does not exist."""
    from pathlib import Path

    from pipeline.privacy import load_key
    from pipeline.schema import current_revision, upgrade

    before = current_revision(ctx.engine)
    upgrade(ctx.engine)
    after = current_revision(ctx.engine)
    state = "already at" if before == after else f"upgraded {before or 'empty'} ->"
    click.echo(f"database {ctx.engine.url.render_as_string(hide_password=True)}: {state} revision {after}")
    existed = Path(ctx.config.privacy.key_file).exists()
    key = load_key(ctx.config.privacy.key_file)
    click.echo(
        f"privacy key {key.path}: {'present' if existed else 'created (mode 0600; back it up apart from the database)'}, fingerprint {key.fingerprint}"
    )
