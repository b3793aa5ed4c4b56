"""The `azamrecon` command: a thin layer over jobs/ and pipeline/.

Every AzamreconError becomes one line on stderr and a non-zero exit code; nothing else escapes as a
traceback unless AZAMRECON_DEBUG is set.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from pipeline.errors import AzamreconError

COMMAND_MODULES = [
    "jobs.commands.admin",
    "jobs.commands.events",
    "jobs.commands.ingest",
    "jobs.commands.serve",
    "jobs.commands.fold",
    "jobs.commands.donations",
    "jobs.commands.patients",
    "jobs.commands.poll",
    "jobs.commands.sandbox",
    "jobs.commands.scheduler",
    "jobs.commands.report",
    "jobs.commands.demo",
    "jobs.commands.privacy",
]


class AzamreconGroup(click.Group):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Click's own usage errors become one line too, instead of usage + hint + error."""
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else (prog_name or "azamrecon")
            click.echo(f"error: {where}: {exc.format_message()} (see --help)", err=True)
            code = exc.exit_code
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            code = exc.exit_code
        except click.Abort:
            click.echo("aborted", err=True)
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AzamreconError as exc:
            if os.environ.get("AZAMRECON_DEBUG"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=AzamreconGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="azamrecon")
def cli() -> None:
    """azamrecon: AzamPay callbacks into an append-only log, folded into donation status and patient funding."""


def _register() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # command module not written yet
            raise
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="azamrecon")


if __name__ == "__main__":
    sys.exit(main())
