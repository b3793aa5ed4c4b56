"""azamrecon poll [--donation ID] [--limit N] [--fold/--no-fold]."""

from __future__ import annotations

import click

from jobs.commands.common import Context, emit_object, format_option, pass_context
from jobs.runs import recorded_run, utcnow


@click.command()
@click.option(
    "--donation",
    "donation_id",
    type=click.IntRange(min=1),
    default=None,
    help="Ask about this one donation now (ignores threshold and backoff).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Check at most this many donations in this run (oldest first).",
)
@click.option(
    "--fold/--no-fold", "fold_after", default=True, show_default=True, help="Fold afterwards so the answers show."
)
@format_option
@pass_context
def poll(ctx: Context, donation_id, limit, fold_after: bool, output_format) -> None:
    """Ask AzamPay about stuck PENDING donations once and append the answers to the log."""
    from jobs.fold import run_fold
    from jobs.poll import run_poll
    from pipeline.azampay import AzamPayClient
    from pipeline.models import RunOutcome

    ctx.setup_logging("poll")
    now = utcnow()
    report = None
    with AzamPayClient(ctx.config.azampay) as client:
        with recorded_run(ctx.engine, "poll", now) as run:
            report = run_poll(ctx.engine, ctx.config, client, now, donation_id=donation_id, limit=limit)
            run.counts = report.as_dict()
            if report.errors and not report.checked and not report.expired:
                run.outcome = RunOutcome.ERROR  # every question failed; the counts carry the first messages
    if report is None:  # recorded_run swallowed LockBusy and recorded the run as skipped
        click.echo("poll skipped: another poller holds the lock")
        return
    data = report.counts()
    if report.error_messages:
        data["first_error"] = report.error_messages[0]
    if report.aborted:
        data["aborted"] = report.aborted
    if fold_after:
        fold_report = run_fold(ctx.engine, ctx.config, utcnow())
        data["folded_events"] = fold_report.events
    emit_object(data, output_format, title="poll")
    if report.aborted and report.errors and not report.checked:
        from pipeline.errors import AzamPayAuthError

        raise AzamPayAuthError(f"poll aborted: {report.aborted}")
