"""azamrecon report [--date YYYY-MM-DD] [--as-of T] [--format table|json|csv] | report --check."""

from __future__ import annotations

import csv
import io
import re
from datetime import date

import click

from jobs.commands.common import Context, format_option, parse_when, pass_context
from pipeline.errors import AzamreconError, InputError
from pipeline.times import EARLIEST, LATEST

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_day(value: str | None, name: str = "--date") -> date | None:
    if value is None:
        return None
    text = value.strip()
    try:
        if not _DATE.match(text):
            raise ValueError
        day = date.fromisoformat(text)
        if not EARLIEST.date() <= day < LATEST.date():  # the report's day bounds must stay representable
            raise ValueError
        return day
    except ValueError:
        raise InputError(
            f"{name}: not a date in the form YYYY-MM-DD between {EARLIEST.year} and {LATEST.year - 1}: {value!r}"
        ) from None


@click.command()
@click.option(
    "--date",
    "day_text",
    default=None,
    metavar="YYYY-MM-DD",
    help="The UTC day whose completed/failed/cancelled donations are counted (default: today, or the day of --as-of).",
)
@click.option(
    "--as-of",
    "as_of_text",
    default=None,
    metavar="T",
    help="Answer from the state as known at T (ISO-8601; naive means UTC), refolded in memory from events received by then. Writes nothing.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Instead of the report: one line per problem and exit 1, or one 'ok' line and exit 0 (thresholds: alerts.*).",
)
@format_option
@pass_context
def report(ctx: Context, day_text, as_of_text, output_format, check) -> None:
    """Answer the webhook guide's monitoring questions in one report.

    \b
    Sections: completed on the day (count, sum per currency), failed and
    cancelled on the day, donations PENDING for longer than
    poll.threshold_minutes (with ages), status counts, per-patient funding
    (received / required / percent / status), anomalies by kind (count and
    latest examples), fold lag (events, seconds) and the invariant check.
    Exits 1 when the invariant check fails (the report is printed first).
    The database used is named on stderr (password hidden).

    \b
    --check         for cron and monitors: prints one line per problem and
                    exits 1 when the fold is stale (no successful fold for
                    alerts.fold_stale_seconds), the oldest unfolded event is
                    older than alerts.max_lag_seconds, the spool holds files,
                    an invariant fails, REVIEW donations exceed
                    alerts.max_review or donations PENDING past
                    poll.max_age_hours exceed alerts.max_stuck_pending;
                    otherwise prints one line starting "ok" and exits 0

    \b
    --format table  one rich table per section
    --format json   the full report object (amounts as decimal strings)
    --format csv    flat rows "section,key,value", one per value; key is a
                    dotted path inside the section, list items named by their
                    id (e.g. completed,sum.TZS,75000.00 or
                    stuck_pending,donations.12.age_minutes,42.0)
    """
    from jobs.report import build_report, flat_rows, report_json
    from jobs.runs import utcnow

    day = parse_day(day_text)
    instant = parse_when(as_of_text, "--as-of")
    if check and (day is not None or instant is not None):
        raise InputError("report --check reads the live state now: drop --date and --as-of")
    # which database answers, on stderr so that the JSON and CSV on stdout stay parseable
    click.echo(f"database: {ctx.engine.url.render_as_string(hide_password=True)}", err=True)
    now = utcnow()
    if check:
        _check(ctx, now)
        return
    if day is None:
        day = (instant or now).date()
    data = build_report(ctx.engine, ctx.config, day=day, now=now, as_of=instant)
    if output_format == "json":
        click.echo(report_json(data))
    elif output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["section", "key", "value"])
        for section, key, value in flat_rows(data):
            writer.writerow([section, key, _text(value)])
        click.echo(buffer.getvalue(), nl=False)
    else:
        _print_tables(data)
    _fail_on_violations(data["invariants"])


def _check(ctx: Context, now) -> None:
    from jobs.report import check_facts
    from pipeline.report_sections import check_ok_line, check_problems

    facts = check_facts(ctx.engine, ctx.config, now)
    problems = check_problems(facts, ctx.config.alerts, now, ctx.config.poll.max_age_hours)
    for line in problems or [check_ok_line(facts, now)]:
        click.echo(line)
    if problems:
        click.get_current_context().exit(1)


def _fail_on_violations(invariants: dict) -> None:
    """A broken invariant is the one answer a cron job or monitor must not miss: exit 1 (one line on stderr)."""
    if not invariants["ok"]:
        violations = invariants["violations"]
        raise AzamreconError(f"report: {len(violations)} invariant violation(s), first: {violations[0]}")


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _print_tables(data: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)

    def table(title: str, columns: list[str], rows: list[list]) -> None:
        grid = Table(title=title)
        for column in columns:
            grid.add_column(column)
        for row in rows:
            grid.add_row(*(_text(value) for value in row))
        console.print(grid)

    basis = f"as of {_text(data['as_of'])}" if data["basis"] == "as_of" else "live"
    lag = data["fold_lag"]
    invariants = data["invariants"]
    table(
        f"report {data['day']} ({basis})",
        ["question", "answer"],
        [
            [
                "completed",
                f"{data['completed']['count']}  " + "  ".join(f"{c} {a}" for c, a in data["completed"]["sum"].items()),
            ],
            ["failed", data["failed"]["count"]],
            ["cancelled", data["cancelled"]["count"]],
            [
                f"stuck PENDING > {data['stuck_pending']['threshold_minutes']:g} min",
                f"{data['stuck_pending']['count']} ({data['stuck_pending']['unpollable']} un-pollable: no AzamPay id)",
            ],
            ["anomalies", data["anomalies"]["total"]],
            ["fold lag", f"{lag['events']} events, {lag['seconds']:.1f} s"],
            ["invariants", "OK" if invariants["ok"] else f"{len(invariants['violations'])} violation(s)"],
            ["generated at", data["generated_at"]],
        ],
    )
    table("donations by status", list(data["status_counts"]), [list(data["status_counts"].values())])
    for name, at in (("completed", "completed_at"), ("failed", "failed_at"), ("cancelled", "cancelled_at")):
        section = data[name]
        if section["donations"]:
            table(
                f"{name} on {data['day']}" + (" (first rows)" if section["truncated"] else ""),
                ["id", "external_reference", "patient", "amount", "currency", at],
                [
                    [d["id"], d["external_reference"], d["patient_id"], d["amount"], d["currency"], d[at]]
                    for d in section["donations"]
                ],
            )
    stuck = data["stuck_pending"]
    if stuck["donations"]:
        table(
            f"stuck PENDING (ages at {_text(stuck['measured_at'])})" + (" (oldest rows)" if stuck["truncated"] else ""),
            ["id", "external_reference", "amount", "currency", "created_at", "age_minutes", "pollable"],
            [
                [
                    d["id"],
                    d["external_reference"],
                    d["amount"],
                    d["currency"],
                    d["created_at"],
                    d["age_minutes"],
                    "yes" if d["pollable"] else "no",
                ]
                for d in stuck["donations"]
            ],
        )
    if data["patients"]:
        table(
            "patient funding",
            ["id", "name", "received", "required", "%", "status"],
            [
                [p["id"], p["name"], p["funding_received"], p["funding_required"], p["percent"], p["status"]]
                for p in data["patients"]
            ],
        )
    if data["anomalies"]["by_kind"]:
        rows = []
        for kind, entry in data["anomalies"]["by_kind"].items():
            for position, example in enumerate(entry["latest"]):
                rows.append(
                    [
                        kind if position == 0 else "",
                        entry["count"] if position == 0 else "",
                        example["event_id"],
                        example["donation_id"],
                        example["detail"],
                    ]
                )
        table("anomalies by kind (latest examples)", ["kind", "count", "event", "donation", "detail"], rows)
        table(
            "what each kind means",
            ["kind", "meaning"],
            [[kind, entry["meaning"]] for kind, entry in data["anomalies"]["by_kind"].items()],
        )
    if invariants["violations"]:
        table("invariant violations", ["violation"], [[line] for line in invariants["violations"]])
