"""Options and helpers shared by every command module."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from typing import Any

import click

from pipeline.config import Config, load_config
from pipeline.errors import InputError, ParseError
from pipeline.events import MAX_AMOUNT, parse_amount
from pipeline.times import EARLIEST, LATEST, parse_utc

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Path to config.yaml (default: ./config.yaml or $AZAMRECON_CONFIG).",
)

format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="Output format.",
)

# For commands whose plain output is a few "key value" lines that scripts and runbooks already grep
# (donations create/resolve, events ingest/ingest-spool): those lines stay the default.
result_format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "table", "json", "csv"]),
    default="text",
    show_default=True,
    help="Output format (text: the plain lines).",
)


@dataclass
class Context:
    """What a command needs, built lazily so that `--help` never touches the database.

    `creates_database`: only `init` (and `demo`) may create one; every other command checks that it exists
    (require_database) before it creates anything else: the log directory, the key file, the spool."""

    config_path: str | None
    env_file: str | None = None
    creates_database: bool = False

    @cached_property
    def config(self) -> Config:
        return load_config(self.config_path, env_file=self.env_file)

    def require_database(self) -> None:
        """A one-line error, before anything is created, when the configured database does not exist."""
        if not self.creates_database:
            from pipeline.db import require_existing

            require_existing(self.config.database)

    def refuse_in_portal_mode(self, what: str) -> None:
        """In portal mode donations and patients are the portal's rows (docs/portal.md): azamrecon creates none."""
        if self.config.portal.enabled:
            from pipeline.errors import ConfigError

            raise ConfigError(f"portal mode: {what} are created in the portal, not by azamrecon (docs/portal.md)")

    @cached_property
    def engine(self):
        from pipeline.db import make_engine

        self.require_database()
        return make_engine(self.config.database)

    def setup_logging(self, component: str = "cli", stderr_level: str | None = "WARNING") -> None:
        """Logging is configured here, at the entry point, and nowhere in library code."""
        from pipeline.logs import configure_logging, secrets_of

        self.require_database()  # before the log directory is created
        configure_logging(
            self.config.logging, component=component, secrets=secrets_of(self.config), stderr_level=stderr_level
        )


def parse_when(value: str | None, name: str) -> datetime | None:
    """ISO-8601 timestamp or date to an aware UTC datetime; a bad value is a one-line InputError."""
    if value is None:
        return None
    try:
        return parse_utc(value)
    except ValueError:
        raise InputError(
            f"{name}: not an ISO-8601 date or timestamp between {EARLIEST.year} and {LATEST.year - 1}: {value!r}"
        ) from None


def parse_amount_option(value: str | None, name: str, positive: bool = True) -> Decimal | None:
    """A money option, read by pipeline.events.parse_amount (the one money grammar: ASCII digits, at most one
    '.', at most 2 decimals, below MAX_AMOUNT). `positive`: 0 is refused (an amount to charge, a patient's
    cost); else it is allowed (a share). A bad value is a one-line InputError naming the option."""
    if value is None:
        return None
    try:
        amount = parse_amount(value)
    except ParseError as exc:
        raise InputError(f"{name}: {exc} (ASCII digits, at most 2 decimal places, below {MAX_AMOUNT:,f})") from None
    if amount is None:  # an empty value
        raise InputError(f"{name}: not a number: {value!r}")
    if positive and amount == 0:
        raise InputError(f"{name}: must be a positive amount: {value!r}")
    return amount


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def to_json(data: Any) -> str:
    return json.dumps(data, default=_jsonable, indent=2, ensure_ascii=False)


def _cell(value: Any) -> Any:
    """A table or CSV cell; a nested list or dict (a donation's credit, anomalies, decisions) as compact
    JSON, which a CSV reader can parse back, rather than Python's repr of datetimes and Decimals."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=_jsonable, ensure_ascii=False, separators=(",", ":"))
    return _jsonable(value)


def emit_rows(
    rows: list[dict[str, Any]], output_format: str, title: str | None = None, columns: Iterable[str] | None = None
) -> None:
    """Print rows as a rich table, JSON or CSV."""
    columns = list(columns or (rows[0].keys() if rows else []))
    if output_format == "json":
        click.echo(to_json(rows))
        return
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _cell(row.get(key)) for key in columns})
        click.echo(buffer.getvalue(), nl=False)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(_cell(row.get(c))) for c in columns))
    Console(width=200).print(table)


def emit_object(data: dict[str, Any], output_format: str, title: str | None = None) -> None:
    if output_format == "json":
        click.echo(to_json(data))
    elif output_format == "csv":
        emit_rows([data], "csv")
    else:
        emit_rows([{"field": k, "value": v} for k, v in data.items()], "table", title=title)


def emit_result(data: dict[str, Any], output_format: str, lines: Iterable[str], title: str | None = None) -> None:
    """`lines` for --format text, else emit_object(data)."""
    if output_format == "text":
        for line in lines:
            click.echo(line)
    else:
        emit_object(data, output_format, title=title)


@contextlib.contextmanager
def progress_bar(label: str, enabled: bool = True):
    """A rich progress bar driven by progress(position, total) callbacks, or None.

    Drawn on stderr, and only when stderr is a terminal: stdout carries the result alone, so
    `--format json | jq` and `> file` stay parseable, and a redirected stderr gets no bar residue.
    """
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=None)

        def update(position: int, total: int) -> None:
            bar.update(task, completed=position, total=max(total, position))

        yield update


def pass_context(func: Callable | None = None, *, creates_database: bool = False) -> Callable:
    """Decorator: adds --config and hands the command a lazily-built Context as first argument, with the
    group's --env-file. `@pass_context(creates_database=True)`: the command may create the database."""
    if func is None:
        return lambda f: pass_context(f, creates_database=creates_database)

    @config_option
    @click.pass_context
    def wrapper(click_ctx: click.Context, config_path: str | None, *args, **kwargs):
        env_file = click_ctx.find_root().params.get("env_file")
        return click_ctx.invoke(func, Context(config_path, env_file, creates_database), *args, **kwargs)

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper
