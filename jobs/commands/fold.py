"""azamrecon fold | rebuild [--check] [--as-of T]."""

from __future__ import annotations

import json
from pathlib import Path

import click

from jobs.commands.common import (
    Context,
    emit_object,
    emit_rows,
    format_option,
    parse_when,
    pass_context,
    progress_bar,
    to_json,
)
from jobs.runs import recorded_run, utcnow


@click.command()
@click.option(
    "--max-batches",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many batches (default: until caught up).",
)
@format_option
@pass_context
def fold(ctx: Context, max_batches, output_format) -> None:
    """Fold new log events into donation status, credits, patient funding and anomalies, once."""
    from jobs.fold import run_fold

    ctx.setup_logging("fold")
    now = utcnow()
    with recorded_run(ctx.engine, "fold", now) as run:
        report = run_fold(ctx.engine, ctx.config, now, max_batches=max_batches)
        run.counts = report.as_dict()
    emit_object(report.as_dict(), output_format, title="fold")


@click.command()
@click.option(
    "--check",
    is_flag=True,
    help="Rebuild in memory and print every difference from the live state; exit 1 if any. Writes nothing.",
)
@click.option(
    "--as-of",
    "as_of_text",
    default=None,
    metavar="T",
    help="Print the state as known at T (ISO-8601) from events received by then. Writes nothing.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="With --as-of: write the JSON state to this file.",
)
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="Show a progress bar on stderr (only when stderr is a terminal).",
)
@format_option
@pass_context
def rebuild(ctx: Context, check, as_of_text, output, progress, output_format) -> None:
    """Reset all derived state and refold the whole log from event 0 (or --check / --as-of without writing)."""
    from jobs import rebuild as jobs_rebuild
    from pipeline.errors import InputError

    instant = parse_when(as_of_text, "--as-of")
    if check and instant is not None:
        raise InputError("--check and --as-of cannot be combined")
    if output and instant is None:
        raise InputError("--output goes with --as-of")
    ctx.setup_logging("rebuild")
    if instant is not None:
        with progress_bar("as-of", progress) as update:
            data = jobs_rebuild.as_of_data(ctx.engine, ctx.config, instant, progress=update)
        if output:
            try:
                Path(output).write_text(to_json(data))
            except OSError as exc:
                raise InputError(f"--output {output}: {exc.strerror or exc}") from None
            click.echo(
                f"state as of {instant.isoformat()} written to {output}: {len(data['donations'])} donations, {len(data['credits'])} credits"
            )
        elif output_format == "json":
            click.echo(to_json(data))
        else:
            _print_as_of(data, output_format)
        return
    if check:
        with progress_bar("check", progress) as update:
            result = jobs_rebuild.check(ctx.engine, ctx.config, progress=update)
        if output_format == "json":
            click.echo(
                json.dumps(
                    {
                        "differences": result.differences,
                        "violations": result.violations,
                        "position": result.position,
                        "events": result.events_compared,
                        "note": result.lag_note,
                    },
                    indent=2,
                )
            )
        elif output_format == "csv":
            rows = [{"difference": line} for line in result.differences]
            rows += [{"difference": f"invariant violation: {line}"} for line in result.violations]
            emit_rows(rows, "csv", columns=["difference"])
        else:
            for line in result.differences:
                click.echo(line)
            for line in result.violations:
                click.echo(f"invariant violation: {line}")
            click.echo(
                f"rebuild --check: {len(result.differences)} difference(s) over {result.events_compared} events (fold position {result.position})"
            )
            if result.lag_note:
                click.echo(result.lag_note)
        if result.differences or result.violations:
            click.get_current_context().exit(1)
        return
    now = utcnow()
    with recorded_run(ctx.engine, "rebuild", now) as run:
        with progress_bar("rebuild", progress) as update:
            report = jobs_rebuild.rebuild(ctx.engine, ctx.config, now, progress=update)
        run.counts = report.as_dict()
    emit_object(report.as_dict(), output_format, title="rebuild")


_AS_OF_DONATION_COLUMNS = ["status", "completed_at", "credit_event_id"]
_AS_OF_PATIENT_COLUMNS = ["funding_received", "status", "fully_funded_at"]


def _print_as_of(data: dict, output_format: str) -> None:
    donations = [{"donation": k, **{f: v[f] for f in _AS_OF_DONATION_COLUMNS}} for k, v in data["donations"].items()]
    patients = [{"patient": k, **v} for k, v in data["patients"].items()]
    if (
        output_format == "csv"
    ):  # one document a CSV reader can take whole: a `kind` column, cells left empty where they do not apply
        rows = [{"kind": "donation", "id": row.pop("donation"), **row} for row in donations]
        rows += [{"kind": "patient", "id": row.pop("patient"), **row} for row in patients]
        emit_rows(rows, "csv", columns=["kind", "id", *dict.fromkeys(_AS_OF_DONATION_COLUMNS + _AS_OF_PATIENT_COLUMNS)])
        return
    emit_rows(donations, output_format, title="donations (as of)", columns=["donation", *_AS_OF_DONATION_COLUMNS])
    emit_rows(patients, output_format, title="patients (as of)", columns=["patient", *_AS_OF_PATIENT_COLUMNS])
    if "portal" in data:  # portal mode: the portal's columns as azamrecon would have written them then
        portal = data["portal"]
        rows = [{"donation": key, **values} for key, values in portal["donations"].items()]
        emit_rows(
            rows,
            output_format,
            title="portal donations (as of)",
            columns=["donation", "status", "completed_at", "failure_reason"],
        )
        rows = [{"patient": key, **values} for key, values in portal["patients"].items()]
        emit_rows(
            rows, output_format, title="portal patients (as of)", columns=["patient", "funding_received", "status"]
        )
