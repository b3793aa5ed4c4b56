"""azamrecon demo."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from jobs.commands.common import Context, pass_context
from pipeline.errors import InputError


@click.command()
@click.option("--dir", "folder", type=click.Path(file_okay=False), default=None, help="Where to put the demo's database, config and logs (must not exist; default: ./demo-run/<timestamp>).")
@pass_context
def demo(ctx: Context, folder) -> None:
    """Run sandbox + receiver + scheduler on loopback over SQLite and walk through six payment scenarios."""
    from jobs.demo import run_demo

    path = Path(folder) if folder else Path("demo-run") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if path.exists():
        raise InputError(f"--dir {path} already exists; the demo needs a fresh folder")
    click.get_current_context().exit(run_demo(path.resolve(), say=click.echo))


COMMANDS = [demo]
