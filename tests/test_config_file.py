"""The shipped config.yaml lists every key of pipeline.config.Config with its default, as README and
docs/deploy.md promise; these tests keep the file and the model from drifting apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from jobs.cli import cli
from pipeline.config import ENV_OVERRIDES, Config, load_config
from pipeline.config_paths import anchor_paths

CONFIG_FILE = Path(__file__).resolve().parents[1] / "config.yaml"
SHIPPED = yaml.safe_load(CONFIG_FILE.read_text(encoding="utf-8"))
MISSING = object()


def _leaves(model: type[BaseModel], prefix: str = ""):
    """(dotted key, field) for every non-section field of the model, recursively."""
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _leaves(field.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


LEAVES: dict[str, FieldInfo] = dict(_leaves(Config))


def _shipped(dotted: str):
    node = SHIPPED
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def test_the_walk_sees_nested_sections():
    assert {"database.url", "azampay.status.success_patterns", "donations.exchange_rates", "logging.retention"} <= set(
        LEAVES
    )


def test_every_config_field_is_in_the_shipped_file():
    missing = [dotted for dotted in LEAVES if _shipped(dotted) is MISSING]
    assert missing == [], f"config.yaml lacks {missing}"


@pytest.mark.parametrize("dotted", sorted(LEAVES))
def test_the_shipped_value_is_the_default(dotted):
    field = LEAVES[dotted]
    value = _shipped(dotted)
    if value is MISSING:
        pytest.skip("reported by test_every_config_field_is_in_the_shipped_file")
    # Validated with the field's type, so YAML's 10 equals 10.0, "1" a Decimal and "" an empty SecretStr.
    assert TypeAdapter(field.annotation).validate_python(value) == field.get_default(call_default_factory=True)


def test_the_shipped_file_loads_to_the_defaults():
    # extra="forbid" also rejects a key the model does not have; its relative paths are anchored at its folder
    assert load_config(CONFIG_FILE, environ={}) == anchor_paths(Config(), CONFIG_FILE.parent)


def test_the_cli_runs_on_the_shipped_file(tmp_path, monkeypatch):
    """Its relative paths (azamrecon.db, logs, spool) land beside it, as in the quick start (run from the
    folder that holds it), whatever the working directory."""
    config_file = tmp_path / "etc" / "config.yaml"
    config_file.parent.mkdir()
    config_file.write_text(CONFIG_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    clean = {name: None for name in (*ENV_OVERRIDES, "AZAMRECON_CONFIG", "AZAMRECON_ENV_FILE")}
    runner = CliRunner()
    init = runner.invoke(cli, ["init", "--config", str(config_file)], env=clean, catch_exceptions=False)
    assert init.exit_code == 0, init.output
    listed = runner.invoke(
        cli, ["patients", "list", "--format", "json", "--config", str(config_file)], env=clean, catch_exceptions=False
    )
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == []
    assert (config_file.parent / "azamrecon.db").exists() and (config_file.parent / "azamrecon.key").exists()
    assert list(elsewhere.iterdir()) == []
