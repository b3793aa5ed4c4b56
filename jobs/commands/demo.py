"""azamrecon demo."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from jobs.commands.common import Context, pass_context
from pipeline.errors import InputError


@click.command()
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to put the demo's database, config and logs (must not exist; default: ./demo-run/<timestamp>).",
)
@pass_context(creates_database=True)
def demo(ctx: Context, folder) -> None:
    """Run sandbox + receiver + scheduler on loopback over SQLite and walk through six payment scenarios.

    Self-contained: ignores --config and the config environment variables (DATABASE_URL, TOKEN, ...).
    """
    import os

    from jobs.demo import config_from_environment, loopback_without_proxy, run_demo

    path = Path(folder) if folder else Path("demo-run") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if path.exists():
        raise InputError(f"--dir {path} already exists; the demo needs a fresh folder")
    # --config comes with every command (pass_context), but the demo must never run on a real config:
    # say so rather than ignore it silently, and still run, since the demo is harmless on its own folder
    where = f"it runs on its own SQLite file and config in {path}/"
    if ctx.config_path:
        click.echo(f"note: demo ignores --config {ctx.config_path}: {where}", err=True)
    if ctx.env_file:
        click.echo(f"note: demo ignores --env-file {ctx.env_file}: {where}", err=True)
    ignored = config_from_environment()
    if ignored:
        click.echo(f"note: demo ignores {', '.join(ignored)} from the environment: {where}", err=True)
    os.environ.update(loopback_without_proxy())  # this process and the ones it starts
    click.get_current_context().exit(run_demo(path.resolve(), say=click.echo))
