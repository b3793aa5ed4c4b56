"""Config: one validated object from config.yaml, overridden by the webhook guide's environment names."""

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.sections import HOSTS

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_without_a_file(tmp_path):
    config = load_config(write(tmp_path, ""), environ={})
    assert config.database.url == f"sqlite:///{tmp_path}/azamrecon.db"  # beside the config file
    assert config.database.sqlite_synchronous == "FULL"
    assert (config.azampay.auth_url, config.azampay.checkout_url) == HOSTS["sandbox"]
    assert config.poll.threshold_minutes == 10 and config.poll.concurrency == 8 and config.poll.max_age_hours == 24
    assert config.donations.reference_prefix == "RHCI-DN"
    assert config.callbacks_trusted_without_credential


def test_the_shipped_config_yaml_is_valid():
    config = load_config(REPO / "config.yaml", environ={})
    assert config.webhook.mode == "auto"


def test_guide_environment_names_override_the_file(tmp_path):
    path = write(tmp_path, "azampay:\n  client_id: from-file\n  timeout_read: 5\nwebhook:\n  password: file-pw\n")
    environ = {
        "AZAM_PAY_ENVIRONMENT": "production",
        "AZAM_PAY_CLIENT_ID": "env-id",
        "AZAM_PAY_CLIENT_SECRET": "env-secret",
        "TOKEN": "env-token",
        "AZAMPAY_VENDOR_ID": "vendor-9",
        "AZAM_PAY_TIMEOUT_CONNECT": "30",
        "AZAM_PAY_TIMEOUT_READ": "60",
        "AZAM_PAY_WEBHOOK_PASSWORD": "env-pw",
        "DATABASE_URL": "mysql+pymysql://u:p@db/azamrecon",
    }
    config = load_config(path, environ=environ)
    assert (config.azampay.auth_url, config.azampay.checkout_url) == HOSTS["production"]
    assert config.azampay.client_id == "env-id"
    assert config.azampay.client_secret.get_secret_value() == "env-secret"
    assert config.azampay.api_key.get_secret_value() == "env-token"
    assert not hasattr(config.azampay, "vendor_id")  # the guide sets it; no AzamPay call takes it
    assert (config.azampay.timeout_connect, config.azampay.timeout_read) == (30.0, 60.0)
    assert config.webhook.password.get_secret_value() == "env-pw"
    assert config.database.url == "mysql+pymysql://u:p@db/azamrecon"
    assert not config.callbacks_trusted_without_credential


def test_a_vendor_id_left_in_an_older_config_file_is_ignored(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text('azampay:\n  vendor_id: "vendor-9"\n  client_id: "id-1"\n')
    config = load_config(path, environ={})
    assert config.azampay.client_id == "id-1" and "vendor_id" not in config.azampay.model_dump()


def test_explicit_urls_beat_the_environment_hosts(tmp_path):
    config = load_config(
        write(tmp_path, ""),
        environ={
            "AZAM_PAY_ENVIRONMENT": "production",
            "AZAM_PAY_AUTH": "https://auth.example/",
            "AZAM_PAY_CHECKOUT_URL": "https://co.example",
        },
    )
    assert (config.azampay.auth_url, config.azampay.checkout_url) == ("https://auth.example", "https://co.example")


@pytest.mark.parametrize(
    "text,environ,names",
    [
        ("", {"AZAM_PAY_ENVIRONMENT": "staging"}, ["azampay.environment", "AZAM_PAY_ENVIRONMENT"]),
        ("", {"AZAM_PAY_TIMEOUT_READ": "soon"}, ["azampay.timeout_read", "AZAM_PAY_TIMEOUT_READ"]),
        ("poll:\n  concurrency: 0\n", {}, ["poll.concurrency"]),
        ("receiver:\n  port: 99999\n", {}, ["receiver.port"]),
        ("fold:\n  batch_size: many\n", {}, ["fold.batch_size"]),
        ("webhook:\n  unknown_key: 1\n", {}, ["webhook.unknown_key"]),
        ("- a list\n", {}, ["mapping"]),
        ("azampay: [unclosed\n", {}, ["cannot parse"]),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(tmp_path, text, environ, names):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ=environ)
    message = str(caught.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_an_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_cli_stops_with_one_line_naming_the_key(tmp_path):
    path = write(tmp_path, f"database:\n  url: sqlite:///{tmp_path}/x.db\n")
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "init", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "AZAM_PAY_ENVIRONMENT": "staging"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "AZAM_PAY_ENVIRONMENT" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.db").exists()
