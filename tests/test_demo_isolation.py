"""The demo must never reach a real config: its children get no config environment, and --config is refused
out loud. Fast: nothing here starts the demo (tests/test_demo.py runs it end to end under a hostile env)."""

import ast
from pathlib import Path
from types import SimpleNamespace

from click.testing import CliRunner

import pipeline.config
from jobs.cli import cli
from jobs.demo import CONFIG_ENV_NAMES, child_environment, loopback_without_proxy, write_config
from pipeline.config import ENV_OVERRIDES, load_config


def _decoys() -> dict[str, str]:
    # values that would each change the loaded config, and all valid, so a leak shows as a difference
    values = {name: "decoy" for name in ENV_OVERRIDES}
    values.update(
        {
            "DATABASE_URL": "sqlite:////nonexistent/production.db",
            "AZAM_PAY_AUTH": "http://127.0.0.1:9/auth",
            "AZAM_PAY_CHECKOUT_URL": "http://127.0.0.1:9/checkout",
            "AZAM_PAY_ENVIRONMENT": "production",
            "AZAM_PAY_TIMEOUT_CONNECT": "7",
            "AZAM_PAY_TIMEOUT_READ": "7",
        }
    )
    return values


def test_child_environment_drops_every_config_name_and_keeps_the_rest(tmp_path):
    production = tmp_path / "production.yaml"
    production.write_text("database: {url: 'sqlite:////nonexistent/from-file.db'}\n")
    environ = {
        **_decoys(),
        "AZAMRECON_CONFIG": str(production),
        "PATH": "/usr/bin",
        "HOME": "/home/x",
        "AZAMRECON_DEBUG": "1",
    }

    child = child_environment(environ)

    assert not set(child) & (set(ENV_OVERRIDES) | {"AZAMRECON_CONFIG"})
    assert child == {"PATH": "/usr/bin", "HOME": "/home/x", "AZAMRECON_DEBUG": "1"}
    settings = SimpleNamespace(client_id="id", client_secret="secret", api_key="key")
    demo_config = write_config(tmp_path, 8123, "http://127.0.0.1:8124", settings)
    # what a child would load from the demo's own file is exactly what the parent loads with environ={}
    assert load_config(demo_config, environ=child) == load_config(demo_config, environ={})
    assert load_config(demo_config, environ=environ) != load_config(demo_config, environ={})  # the decoys do bite


def _environment_names_read_by(module) -> set[str]:
    """String constants the module uses as environment names: environ.get("X"), environ["X"], "X" in environ,
    os.getenv("X"), so a name added to the config layer outside ENV_OVERRIDES cannot slip past the demo."""

    def is_environ(node) -> bool:
        return (isinstance(node, ast.Name) and node.id == "environ") or (
            isinstance(node, ast.Attribute) and node.attr == "environ"
        )

    names = set()
    for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
        key = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if (node.func.attr == "get" and is_environ(node.func.value)) or node.func.attr == "getenv":
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and is_environ(node.value):
            key = node.slice
        elif isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
            key = node.left
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            names.add(key.value)
    return names


def test_demo_strips_every_name_the_config_layer_reads():
    read = _environment_names_read_by(pipeline.config) | set(ENV_OVERRIDES)
    assert "AZAMRECON_CONFIG" in read  # the scanner sees load_config's own look-ups
    assert read <= CONFIG_ENV_NAMES, f"the demo's children would still see {sorted(read - CONFIG_ENV_NAMES)}"


def _run_demo_command(monkeypatch, args):
    started = []
    monkeypatch.setattr("jobs.demo.run_demo", lambda folder, say: started.append(folder) or 0)
    result = CliRunner().invoke(cli, ["demo", *args])
    return result, started


def test_demo_says_it_ignores_config_and_still_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "sqlite:////nonexistent/production.db")
    monkeypatch.setenv("TOKEN", "production-token")
    monkeypatch.setenv("AZAMRECON_CONFIG", "/etc/azamrecon/config.yaml")
    folder = tmp_path / "run"

    result, started = _run_demo_command(monkeypatch, ["--config", "/etc/azamrecon/config.yaml", "--dir", str(folder)])

    assert result.exit_code == 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert started == [folder.resolve()]
    notes = result.stderr.splitlines()
    assert notes == [
        f"note: demo ignores --config /etc/azamrecon/config.yaml: it runs on its own SQLite file and config in {folder}/",
        f"note: demo ignores AZAMRECON_CONFIG, DATABASE_URL, TOKEN from the environment: it runs on its own SQLite file and config in {folder}/",
    ]
    assert "production-token" not in result.output  # names only: the values may be secrets


def test_demo_without_config_says_nothing(tmp_path, monkeypatch):
    for name in CONFIG_ENV_NAMES:
        monkeypatch.delenv(name, raising=False)

    result, started = _run_demo_command(monkeypatch, ["--dir", str(tmp_path / "run")])

    assert result.exit_code == 0, result.output
    assert result.stderr == "" and len(started) == 1


def test_loopback_is_added_to_the_proxy_exceptions_not_put_in_their_place():
    assert loopback_without_proxy({"NO_PROXY": "intranet.example, 127.0.0.1", "no_proxy": ""}) == {
        "NO_PROXY": "intranet.example,127.0.0.1,localhost,::1",
        "no_proxy": "127.0.0.1,localhost,::1",
    }
