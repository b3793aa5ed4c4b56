"""azamrecon scheduler."""

from __future__ import annotations

import click

from jobs.commands.common import Context, pass_context


@click.command()
@pass_context
def scheduler(ctx: Context) -> None:
    """Run the scheduler daemon: fold, poll, spool ingest, the daily report and privacy retain, until SIGTERM."""
    from jobs.scheduler import run_scheduler
    from pipeline.logs import warn_if_open

    ctx.setup_logging("scheduler", stderr_level="INFO")
    warn_if_open(ctx.config)
    run_scheduler(ctx.engine, ctx.config)
