"""azamrecon portal sync|diff|apply: portal mode beside the Django portal (docs/portal.md)."""

from __future__ import annotations

import sys

import click

from jobs.commands.common import Context, emit_object, emit_rows, format_option, pass_context
from jobs.runs import utcnow
from pipeline.errors import ConfigError


@click.group()
def portal() -> None:
    """Portal mode: the Django portal's donations and patients (docs/portal.md)."""


def _enabled(ctx: Context) -> None:
    if not ctx.config.portal.enabled:
        raise ConfigError("portal mode is off: set portal.enabled: true in config.yaml (docs/portal.md)")


@portal.command("sync")
@format_option
@pass_context
def sync(ctx: Context, output_format) -> None:
    """Record every portal row's new or changed facts in the log now (the fold does this before each run)."""
    from jobs.portal_sync import sync_portal

    _enabled(ctx)
    report = sync_portal(ctx.engine, ctx.config, utcnow(), full=True)
    data = {
        "donations_read": report.donations_read,
        "facts_recorded": report.facts_recorded,
        "patients_recorded": report.patients_recorded,
        "first_seen_azamrecon": len(report.owned),
        "first_seen_portal": len(report.theirs),
        "external_writes": len(report.external),
        "undecided": report.undecided,
    }
    emit_object(data, output_format, title="portal sync")


@portal.command("diff")
@format_option
@pass_context
def diff(ctx: Context, output_format) -> None:
    """Every donation and patient where azamrecon's result differs from the portal's, with the reason.
    Exits 1 when there is any difference (shadow mode's cutover test: docs/portal.md)."""
    from jobs.portal_diff import portal_diff
    from pipeline.portal_diff import COLUMNS

    _enabled(ctx)
    rows = portal_diff(ctx.engine, ctx.config, utcnow())
    emit_rows(rows, output_format, title=f"{len(rows)} difference(s)", columns=COLUMNS)
    if rows:
        sys.exit(1)


@portal.command("apply")
@format_option
@pass_context
def apply(ctx: Context, output_format) -> None:
    """Write every result that differs into the portal's rows, in short compare-and-set batches (after a rebuild)."""
    from jobs.portal_write import apply_portal

    _enabled(ctx)
    if not ctx.config.portal.write:
        raise ConfigError("portal.write is false (shadow mode): nothing is written to the portal")
    report = apply_portal(ctx.engine, ctx.config, utcnow())
    emit_object(dict(report.__dict__), output_format, title="portal apply")


@portal.command("adopt")
@click.option("--dry-run", is_flag=True, help="Compute and print everything; change nothing.")
@click.option("--force", is_flag=True, help="Adopt even though the portal shows sandbox auto-complete at work.")
@format_option
@pass_context
def adopt_command(ctx: Context, dry_run: bool, force: bool, output_format) -> None:
    """Record the portal's truth at cutover in the log, before the receiver takes traffic, and list where
    the portal disagrees with itself. A second run adds nothing."""
    from jobs.portal_adopt import adopt
    from pipeline.portal_adopt import COLUMNS

    _enabled(ctx)
    result = adopt(ctx.engine, ctx.config, utcnow(), dry_run=dry_run, force=force)
    title = (
        f"{'dry run: would adopt' if dry_run else 'adopted'} {result.adopted} final donation(s), "
        f"{result.recorded} fact(s) recorded; the portal disagrees with itself in {len(result.inconsistencies)} place(s)"
    )
    if force and result.auto_completed:
        click.echo(
            f"warning: --force: adopting {len(result.auto_completed)} donation(s) that look sandbox auto-completed",
            err=True,
        )
    emit_rows(result.inconsistencies, output_format, title=title, columns=COLUMNS)
