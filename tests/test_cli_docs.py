"""Every CLI command has help text and appears in README's command reference (sqlite-utils' rule)."""

from pathlib import Path

import click
import pytest

from jobs.cli import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _commands(group: click.Group, prefix: str = "azamrecon"):
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from _commands(command, path)


COMMANDS = list(_commands(cli))

EXPECTED = {
    "azamrecon init",
    "azamrecon db-url",
    "azamrecon serve",
    "azamrecon scheduler",
    "azamrecon fold",
    "azamrecon poll",
    "azamrecon rebuild",
    "azamrecon report",
    "azamrecon patients add",
    "azamrecon patients show",
    "azamrecon donations create",
    "azamrecon donations show",
    "azamrecon donations resolve",
    "azamrecon events list",
    "azamrecon events show",
    "azamrecon events ingest",
    "azamrecon events ingest-spool",
    "azamrecon sandbox",
    "azamrecon demo",
}


# db-url only prints a URL built from its argument and the password typed: no config is read
READS_NO_CONFIG = {"azamrecon db-url"}


def test_every_designed_command_exists():
    assert EXPECTED <= {path for path, _ in COMMANDS}


@pytest.mark.parametrize("path,command", COMMANDS, ids=[path for path, _ in COMMANDS])
def test_command_has_help_and_is_documented(path, command):
    assert (command.help or "").strip(), f"{path} has no help text"
    assert f"`{path}" in README, f"{path} is missing from README's command reference"


@pytest.mark.parametrize(
    "path,command",
    [(p, c) for p, c in COMMANDS if not isinstance(c, click.Group)],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_every_command_takes_config(path, command):
    if path in READS_NO_CONFIG:
        assert not any(param.name == "config_path" for param in command.params), f"{path} would ignore --config"
        return
    assert any(param.name == "config_path" for param in command.params), f"{path} does not take --config"


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_exit_code_is_in_readme_exit_codes():
    """A new error class with a new code, or a command's own exit, must not go undocumented."""
    from pipeline.errors import AzamreconError

    section = README.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {
        int(line.split("|")[1])
        for line in section.splitlines()
        if line.startswith("| ") and line.split("|")[1].strip().isdigit()
    }
    used = {cls.exit_code for cls in [AzamreconError, *_subclasses(AzamreconError)]} | {
        0,
        2,
        130,
    }  # success, click usage, Ctrl-C
    assert used <= documented, sorted(used - documented)
