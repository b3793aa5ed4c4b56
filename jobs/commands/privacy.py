"""azamrecon privacy scrub|retain|find|erase: secrets and personal data at rest (jobs.privacy, jobs.retain, docs/privacy.md)."""

from __future__ import annotations

import click

from jobs.commands.common import (
    Context,
    emit_result,
    emit_rows,
    format_option,
    parse_when,
    pass_context,
    result_format_option,
    to_json,
)
from pipeline.errors import InputError

REWRITE_FLAG = "--rewrite-log"
rewrite_option = click.option(
    "--rewrite-log",
    "rewrite_log",
    is_flag=True,
    default=False,
    help="Rewrite stored events: the one exception to the append-only log, recorded in privacy_rewrites. Required unless --dry-run.",
)
dry_run_option = click.option("--dry-run", is_flag=True, default=False, help="Count what would change; change nothing.")


def _asked_by_name(command: str, rewrite_log: bool, dry_run: bool) -> None:
    """A rewrite of the log runs only when asked for by name, never by accident or by a bare command."""
    if not rewrite_log and not dry_run:
        raise InputError(
            f"privacy {command} rewrites stored events (the one exception to the append-only log): "
            f"add {REWRITE_FLAG} to run it, or --dry-run to count what it would change"
        )


def _line(counts: dict) -> list[str]:
    return [" ".join(f"{key}={value}" for key, value in counts.items())]


@click.group()
def privacy() -> None:
    """Secrets and personal data at rest: scrub, retain, find, erase (docs/privacy.md)."""


@privacy.command("scrub")
@rewrite_option
@dry_run_option
@result_format_option
@pass_context
def scrub(ctx: Context, rewrite_log: bool, dry_run: bool, output_format: str) -> None:
    """Replace the secrets (the webhook `password`, tokens, keys) of bodies stored
    before azamrecon kept them out of storage with keyed-hash markers.

    \b
    Run once after upgrading; idempotent. body_sha256 (of the bytes received)
    is kept. Needs --rewrite-log (or --dry-run): it rewrites the log.
    """
    from jobs.privacy import scrub_secrets
    from jobs.runs import recorded_run, utcnow

    _asked_by_name("scrub", rewrite_log, dry_run)
    ctx.setup_logging("privacy")
    now = utcnow()
    with recorded_run(ctx.engine, "privacy-scrub", now) as run:
        counts = run.counts = scrub_secrets(ctx.engine, ctx.config, now, dry_run=dry_run)
    emit_result(counts, output_format, _line(counts), title="privacy scrub")


@privacy.command("retain")
@click.option(
    "--now", "now_text", default=None, metavar="T", help="The instant retention is applied at (ISO-8601; default: now)."
)
@dry_run_option
@result_format_option
@pass_context
def retain_command(ctx: Context, now_text: str | None, dry_run: bool, output_format: str) -> None:
    """Apply privacy.msisdn_retention_days: phone numbers unused for longer
    become hmac:<hash>:<last 3 digits> in stored bodies, events and
    donations; log files last written before then are deleted (rotated) or
    emptied (live).

    \b
    The scheduler runs this daily at privacy.retain_cron. A number still held
    by a recent event or donation is kept everywhere until it is not.
    """
    from jobs.retain import retain
    from jobs.runs import recorded_run, utcnow

    now = parse_when(now_text, "--now") or utcnow()
    ctx.setup_logging("privacy")
    with recorded_run(ctx.engine, "privacy-retain", now) as run:
        counts = run.counts = retain(ctx.engine, ctx.config, now, dry_run=dry_run)
    emit_result(counts, output_format, _line(counts), title="privacy retain")


@privacy.command("find")
@click.argument("msisdn")
@format_option
@pass_context
def find(ctx: Context, msisdn: str, output_format: str) -> None:
    """List the donations and events that hold a donor's number (in clear, or
    hashed past its retention): a donor's request to see their data."""
    from jobs.privacy import find_donor

    found = find_donor(ctx.engine, ctx.config, msisdn)
    if output_format == "json":
        click.echo(to_json(found))
        return
    emit_rows(
        found["donations"],
        output_format,
        title="donations",
        columns=("id", "created_at", "status", "amount", "currency", "msisdn", "provider"),
    )
    emit_rows(
        found["events"],
        output_format,
        title="payment_events",
        columns=("id", "received_at", "source", "status", "amount", "msisdn"),
    )


@privacy.command("erase")
@click.argument("msisdn")
@rewrite_option
@dry_run_option
@result_format_option
@pass_context
def erase(ctx: Context, msisdn: str, rewrite_log: bool, dry_run: bool, output_format: str) -> None:
    """Replace one donor's number now, everywhere in the database, by its keyed
    hash and last 3 digits: a donor's request to erase their data. Money
    facts stay. Refused while a donation with the number is PENDING or
    REVIEW. Needs --rewrite-log (or --dry-run)."""
    from jobs.privacy import erase_donor
    from jobs.runs import utcnow

    _asked_by_name("erase", rewrite_log, dry_run)
    ctx.setup_logging("privacy")
    counts = erase_donor(ctx.engine, ctx.config, msisdn, utcnow(), dry_run=dry_run)
    emit_result(counts, output_format, _line(counts), title="privacy erase")
