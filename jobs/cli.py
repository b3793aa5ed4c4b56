"""The `azamrecon` command: a thin layer over jobs/ and pipeline/.

Every AzamreconError becomes one line on stderr and a non-zero exit code; nothing else escapes as a
traceback unless AZAMRECON_DEBUG is set.
"""

from __future__ import annotations

import os
import sys

import click

from jobs.commands.admin import init
from jobs.commands.dburl import db_url
from jobs.commands.demo import demo
from jobs.commands.donations import donations
from jobs.commands.events import events
from jobs.commands.fold import fold, rebuild
from jobs.commands.ingest import ingest
from jobs.commands.patients import patients
from jobs.commands.poll import poll
from jobs.commands.portal import portal
from jobs.commands.privacy import privacy
from jobs.commands.report import report
from jobs.commands.sandbox import sandbox
from jobs.commands.scheduler import scheduler
from jobs.commands.serve import serve
from pipeline.errors import AzamreconError


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
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="A systemd EnvironmentFile (KEY=VALUE, systemd's quoting, no $ expansion) whose values override the "
    "environment, as the units' EnvironmentFile= does (default: $AZAMRECON_ENV_FILE).",
)
def cli(env_file: str | None) -> None:
    """azamrecon: AzamPay callbacks into an append-only log, folded into donation status and patient funding."""
    path = env_file or os.environ.get("AZAMRECON_ENV_FILE")
    if path:
        from pipeline.envfile import read_env_file

        # the whole process sees the file, as a unit's EnvironmentFile= gives it: the AzamPay client's
        # HTTPS_PROXY, NO_PROXY and REQUESTS_CA_BUNDLE too, not only the config's names
        os.environ.update(read_env_file(path))


# The command modules import their heavy dependencies inside the commands: importing them all here stays cheap.
cli.add_command(init)
cli.add_command(events)
cli.add_command(serve)
cli.add_command(fold)
cli.add_command(rebuild)
cli.add_command(donations)
cli.add_command(patients)
cli.add_command(poll)
cli.add_command(sandbox)
cli.add_command(scheduler)
cli.add_command(report)
cli.add_command(demo)
cli.add_command(privacy)
cli.add_command(db_url)
cli.add_command(portal)
events.add_command(ingest)  # `events ingest` lives in its own module (jobs/commands/ingest.py)


def main() -> None:
    cli(prog_name="azamrecon")


if __name__ == "__main__":
    sys.exit(main())
