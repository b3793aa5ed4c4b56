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
    "azamrecon init", "azamrecon serve", "azamrecon scheduler", "azamrecon fold", "azamrecon poll", "azamrecon rebuild",
    "azamrecon report", "azamrecon patients add", "azamrecon patients show", "azamrecon donations create",
    "azamrecon donations show", "azamrecon donations resolve", "azamrecon events list", "azamrecon events show",
    "azamrecon events ingest", "azamrecon events ingest-spool", "azamrecon sandbox", "azamrecon demo",
}


def test_every_designed_command_exists():
    assert EXPECTED <= {path for path, _ in COMMANDS}


@pytest.mark.parametrize("path,command", COMMANDS, ids=[path for path, _ in COMMANDS])
def test_command_has_help_and_is_documented(path, command):
    assert (command.help or "").strip(), f"{path} has no help text"
    assert f"`{path}" in README, f"{path} is missing from README's command reference"


@pytest.mark.parametrize("path,command", [(p, c) for p, c in COMMANDS if not isinstance(c, click.Group)], ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_takes_config(path, command):
    assert any(param.name == "config_path" for param in command.params), f"{path} does not take --config"
