"""azamrecon scheduler."""

from __future__ import annotations

import os

import click

from jobs.commands.common import Context, pass_context

# Undocumented, for tests: how often a repeating job failure is summarised (default 60 s, pipeline.throttle).
SUMMARY_SECONDS_ENV = "AZAMRECON_FAILURE_SUMMARY_SECONDS"


@click.command()
@pass_context
def scheduler(ctx: Context) -> None:
    """Run the scheduler daemon: fold, poll, spool ingest, the daily report and privacy retain, until SIGTERM."""
    from jobs.scheduler import run_scheduler
    from pipeline.errors import InputError
    from pipeline.logs import warn_if_open
    from pipeline.throttle import SUMMARY_SECONDS

    text = os.environ.get(SUMMARY_SECONDS_ENV, "")
    try:
        summary_seconds = float(text) if text else SUMMARY_SECONDS
    except ValueError:
        raise InputError(f"{SUMMARY_SECONDS_ENV}: not a number of seconds: {text[:40]!r}") from None
    ctx.setup_logging("scheduler", stderr_level="INFO")
    warn_if_open(ctx.config)
    run_scheduler(ctx.engine, ctx.config, summary_seconds=summary_seconds)
