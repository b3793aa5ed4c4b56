"""azamrecon events ingest FILE: backfill callbacks from an existing deployment's logs (jobs.ingest)."""

from __future__ import annotations

import click

from jobs.commands.common import Context, emit_result, pass_context, progress_bar, result_format_option
from jobs.commands.events import events
from pipeline.errors import AzamreconError


@events.command("ingest")
@click.argument("file", metavar="FILE")
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="Show a progress bar on stderr (only when stderr is a terminal).",
)
@click.option(
    "--naive-offset",
    default="+00:00",
    show_default=True,
    metavar="+HH:MM",
    help="UTC offset of log-line timestamps written without one (Django writes its TIME_ZONE: +03:00 for Africa/Dar_es_Salaam). Choose it before a file's first import: importing it again under another offset adds nothing.",
)
@result_format_option
@pass_context
def ingest(ctx: Context, file: str, progress: bool, naive_offset: str, output_format: str) -> None:
    """Import callbacks from FILE into the log as source=import (idempotent).

    \b
    FILE may mix, line by line:
      - log lines with `Received Azam Pay callback: {...}`: the legacy Django
        logs/payments.log (Python dict repr) or azamrecon's own payments.log;
        received_at is the line's timestamp, at --naive-offset when it has none;
      - JSON lines: {"received_at": "<ISO-8601>", "body": {...}} or a bare
        callback body {...} (received_at: its "received_at" key, else now).
    Other lines are skipped. Prints read, imported, duplicates, skipped and
    errors counts; exits 1 when errors is not 0 (the other lines are imported;
    the log names the failed lines by number). Importing the same file again
    imports nothing. Run `azamrecon fold` (or let the scheduler) to fold the
    imported events.
    """
    from jobs.ingest import check_readable, ingest_file
    from jobs.runs import recorded_run, utcnow
    from pipeline.import_lines import parse_offset
    from pipeline.logs import configure_logging, secrets_of

    naive_zone = parse_offset(naive_offset)
    check_readable(file)
    ctx.require_database()  # before the log directory is created
    configure_logging(ctx.config.logging, component="ingest", secrets=secrets_of(ctx.config))
    now = utcnow()
    with recorded_run(ctx.engine, "ingest", now) as run:
        with progress_bar("ingest", progress) as update:
            counts = ingest_file(ctx.engine, ctx.config, file, now, progress=update, naive_zone=naive_zone)
        run.counts = counts
    emit_result(counts, output_format, [" ".join(f"{key}={value}" for key, value in counts.items())], title="ingest")
    if counts["errors"]:  # a backfill that lost callbacks must not look done to the script that ran it
        raise AzamreconError(
            f"{counts['errors']} line(s) of {file} could not be imported (the warnings give their line numbers); the other lines were"
        )
