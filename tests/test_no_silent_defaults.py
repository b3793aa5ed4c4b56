"""No silent defaults: only `init` creates a database; relative paths follow the config file, not the
working directory; `--env-file` reads a systemd EnvironmentFile; `db-url` percent-encodes a password."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from jobs.cli import cli
from jobs.commands.dburl import url_with_password
from pipeline.config import ENV_OVERRIDES, load_config
from pipeline.envfile import parse_env_text, read_env_file
from pipeline.errors import ConfigError, InputError
from tests.conftest import MYSQL_SERVER
from tests.servers import REPO, config_settings, write_config

CONFIG_NAMES = (*ENV_OVERRIDES, "AZAMRECON_CONFIG", "AZAMRECON_ENV_FILE", "AZAMRECON_DEBUG")


def clean_environment(**extra: str) -> dict[str, str]:
    environ = {name: value for name, value in os.environ.items() if name not in CONFIG_NAMES}
    environ["PYTHONPATH"] = str(REPO)
    return environ | extra


def azamrecon(*args: str, cwd, timeout: float = 20.0, **extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "jobs.cli", *args]
    environ = clean_environment(**extra)
    return subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "args", [["report"], ["fold"], ["events", "list"], ["serve", "--port", "0"], ["scheduler"], ["poll"]]
)
def test_a_command_without_config_in_an_empty_directory_creates_nothing(tmp_path, args):
    result = azamrecon(*args, cwd=tmp_path)
    assert result.returncode == 4, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: database sqlite:///{tmp_path}/azamrecon.db does not exist")
    for how in ("--config", "DATABASE_URL", "--env-file", "azamrecon init"):
        assert how in lines[0]
    assert list(tmp_path.iterdir()) == []  # no database, logs/, key file or spool


def test_init_still_creates_the_database_beside_the_config_file(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "config.yaml").write_text("logging:\n  level: INFO\n")
    (tmp_path / "run").mkdir()
    result = azamrecon("init", "--config", "../etc/config.yaml", cwd=tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "etc" / "azamrecon.db").exists() and (tmp_path / "etc" / "azamrecon.key").exists()
    assert list((tmp_path / "run").iterdir()) == []


def test_poll_from_another_directory_logs_beside_the_config_file(sqlite_backend, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    settings = config_settings(sqlite_backend) | {"logging.dir": "logs", "receiver.spool_dir": "spool"}
    settings |= {"azampay.auth_url": "http://127.0.0.1:1", "azampay.checkout_url": "http://127.0.0.1:1"}
    config_path = write_config(home / "config.yaml", settings)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = azamrecon("poll", "--config", str(config_path), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert list(elsewhere.iterdir()) == []  # no stray logs/
    assert (home / "logs" / "app.log").exists()


def test_relative_paths_are_anchored_at_the_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "etc" / "azamrecon"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        "database:\n  url: sqlite:///data/azamrecon.db\nlogging:\n  dir: logs\nreceiver:\n  spool_dir: spool\n"
        "  metrics_dir: /var/lib/azamrecon/metrics\nprivacy:\n  key_file: keys/azamrecon.key\n"
        "webhook:\n  signature_public_key_pem: azampay.pem\nscheduler:\n  reports_dir: reports\n"
    )
    config = load_config("etc/azamrecon/config.yaml", environ={})
    assert make_url(config.database.url).database == str(folder / "data" / "azamrecon.db")
    assert config.logging.dir == str(folder / "logs")
    assert config.receiver.spool_dir == str(folder / "spool")
    assert config.receiver.metrics_dir == "/var/lib/azamrecon/metrics"  # absolute: unchanged
    assert config.privacy.key_file == str(folder / "keys" / "azamrecon.key")
    assert config.webhook.signature_public_key_pem == str(folder / "azampay.pem")
    assert config.scheduler.reports_dir == str(folder / "reports")  # the daily report's files
    # DATABASE_URL's relative SQLite path follows the config file too; PEM text and :memory: stay as they are
    pem = "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----"
    config = load_config(
        "etc/azamrecon/config.yaml",
        environ={"DATABASE_URL": "sqlite:///other.db"},
        overrides={"webhook.signature_public_key_pem": pem},
    )
    assert config.database.url == f"sqlite:///{folder}/other.db"
    assert config.webhook.signature_public_key_pem == pem
    assert load_config(None, environ={"DATABASE_URL": "sqlite://"}).database.url == "sqlite://"
    # no config file: the working directory
    assert load_config(None, environ={}).logging.dir == str(tmp_path / "logs")


# --- the systemd env file -----------------------------------------------------------------------

ENV_FILE = r"""# azamrecon, read by systemd (EnvironmentFile=) and by azamrecon --env-file
; a comment in systemd's other style
DATABASE_URL=mysql+pymysql://azamrecon:pa%24%24w0rd@127.0.0.1:3306/azamrecon
AZAM_PAY_WEBHOOK_PASSWORD = pa$$w0rd
  TOKEN='single $HOME "kept"'
AZAM_PAY_CLIENT_SECRET="double \"quoted\" \$x \\ \n"
AZAM_PAY_CLIENT_ID=trailing blanks dropped<blanks>
AZAM_PAY_AUTH=http://127.0.0.1:1/a\
b
# a comment continued \
NOT_A_VARIABLE=still the comment
EMPTY=
""".replace("<blanks>", " \t ")


def test_the_env_file_is_read_with_systemds_rules():
    values = parse_env_text(ENV_FILE)
    assert values == {
        "DATABASE_URL": "mysql+pymysql://azamrecon:pa%24%24w0rd@127.0.0.1:3306/azamrecon",
        "AZAM_PAY_WEBHOOK_PASSWORD": "pa$$w0rd",
        "TOKEN": 'single $HOME "kept"',
        "AZAM_PAY_CLIENT_SECRET": 'double "quoted" $x \\ \\n',
        "AZAM_PAY_CLIENT_ID": "trailing blanks dropped",
        "AZAM_PAY_AUTH": "http://127.0.0.1:1/ab",
        "EMPTY": "",
    }
    assert make_url(values["DATABASE_URL"]).password == "pa$$w0rd"


@pytest.mark.parametrize(
    "text,line,problem",
    [
        ("A=1\njust words\n", 2, "not KEY=VALUE"),
        ("A=1\n\n1BAD=x\n", 3, "is not a variable name"),
        ("A='open\nB=2\n", 1, "unterminated ' quote"),
        ('A="open\\\n', 1, 'unterminated " quote'),
    ],
)
def test_a_bad_env_line_is_one_error_naming_the_file_and_line(tmp_path, text, line, problem):
    path = tmp_path / "azamrecon.env"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        read_env_file(path)
    assert str(raised.value).startswith(f"{path} line {line}: ") and problem in str(raised.value)


def test_env_file_values_reach_the_config_and_override_the_environment(sqlite_backend, tmp_path):
    env_file = tmp_path / "azamrecon.env"
    env_file.write_text(f"DATABASE_URL={sqlite_backend.url}\nAZAM_PAY_WEBHOOK_PASSWORD='pa$$w0rd'\n")
    config = load_config(None, environ={"AZAM_PAY_WEBHOOK_PASSWORD": "from-shell"}, env_file=env_file)
    assert config.webhook.password.get_secret_value() == "pa$$w0rd"
    assert config.database.url == sqlite_backend.url
    # the global option, and the variable, on a command that reads the database
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args, extra in (
        (["--env-file", str(env_file), "events", "list", "--format", "json"], {}),
        (["events", "list", "--format", "json"], {"AZAMRECON_ENV_FILE": str(env_file)}),
    ):
        result = azamrecon(*args, cwd=elsewhere, **extra)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "[]"
    env_file.write_text("DATABASE_URL=x\nthis line is not an assignment\n")
    result = azamrecon("--env-file", str(env_file), "report", cwd=elsewhere)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {env_file} line 2: not KEY=VALUE (systemd EnvironmentFile syntax)"


# --- db-url -------------------------------------------------------------------------------------

HOSTILE = "p@ss:w/o%rd$#?x &+ é"


def test_db_url_percent_encodes_a_password_that_round_trips():
    url = url_with_password("mysql+pymysql://azamrecon@127.0.0.1:3306/azamrecon?charset=utf8mb4", HOSTILE)
    parsed = make_url(url)
    assert parsed.password == HOSTILE
    assert (parsed.username, parsed.host, parsed.port, parsed.database) == ("azamrecon", "127.0.0.1", 3306, "azamrecon")
    assert parsed.query == {"charset": "utf8mb4"}
    assert "$" not in url and "@" not in url.split("@")[0].split("//")[1]  # shell- and URL-safe


@pytest.mark.parametrize(
    "url,problem",
    [
        ("mysql+pymysql://u:already@h/db", "already holds a password"),
        ("not a url", "not a database URL"),
        ("mysql+pymysql://h/db", "names no user"),
    ],
)
def test_db_url_refuses_with_one_line(url, problem):
    with pytest.raises(InputError, match=problem):
        url_with_password(url, "pw")
    result = CliRunner().invoke(cli, ["db-url", url], input="pw\n")
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: ") and problem in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "pw" not in result.stdout


def test_db_url_reads_one_line_from_a_pipe(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "db-url", "mysql+pymysql://azamrecon@127.0.0.1:3306/azamrecon"],
        input=HOSTILE + "\nsecond line ignored\n",
        env=clean_environment(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert make_url(result.stdout.strip()).password == HOSTILE
    assert HOSTILE not in result.stdout + result.stderr


# --- MySQL: an unknown database fails at connect, in one line --------------------------------------


@pytest.mark.mysql
def test_an_unknown_mysql_database_is_one_line(mysql_backend, tmp_path):
    url = MYSQL_SERVER.rstrip("/") + "/azamrecon_no_such_database"
    result = azamrecon("report", cwd=tmp_path, DATABASE_URL=url)
    assert result.returncode == 4, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Unknown database 'azamrecon_no_such_database'" in errors[0]
    assert "DATABASE_URL" in errors[0] and "Traceback" not in result.stderr


def test_events_ingest_without_config_creates_nothing(tmp_path):
    lines = tmp_path / "old" / "payments.log"
    lines.parent.mkdir()
    lines.write_text("")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = azamrecon("events", "ingest", str(lines), cwd=empty)
    assert result.returncode == 4, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "does not exist" in result.stderr
    assert list(empty.iterdir()) == []  # no logs/ before the database check


def test_the_env_file_reaches_the_whole_process(tmp_path, monkeypatch):
    """As a unit's EnvironmentFile= does: the AzamPay client's proxy settings too, not only config names."""
    from jobs.cli import cli

    env_file = tmp_path / "azamrecon.env"
    env_file.write_text("HTTPS_PROXY=http://127.0.0.1:3128\nNO_PROXY='127.0.0.1,localhost'\n")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setattr(os, "environ", os.environ.copy())  # the test process's own environment stays as it was
    cli.main(["--env-file", str(env_file), "db-url", "--help"], standalone_mode=False)
    assert os.environ["HTTPS_PROXY"] == "http://127.0.0.1:3128" and os.environ["NO_PROXY"] == "127.0.0.1,localhost"
