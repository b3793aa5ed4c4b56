"""Bad config, bad environment and an uninitialised database through the real CLI: one `error:` line
on stderr and a non-zero exit, never a traceback (each case used to escape as one)."""

from __future__ import annotations

import importlib.util

import pymysql
import pytest
from click.testing import CliRunner
from loguru import logger
from sqlalchemy.exc import ProgrammingError

from jobs.cli import cli
from pipeline.config import ENV_OVERRIDES
from pipeline.db import make_engine, translate
from pipeline.errors import ConfigError
from pipeline.sections import DatabaseConfig
from pipeline.times import parse_utc
from tests.servers import config_settings, write_config

# Nothing listens on port 1 of the loopback: the connection is refused at once, no server needed.
CLOSED_MYSQL = "mysql+pymysql://root@127.0.0.1:1/x"

# (args, dotted config settings, environment, exit code, texts the error line must name)
# "{tmp}" is the test's tmp_path; a None environment value unsets the variable.
CASES = [
    (["init"], {}, {"DATABASE_URL": CLOSED_MYSQL}, 4, ["database unreachable", "127.0.0.1"]),
    (["fold"], {}, {"DATABASE_URL": "notaurl"}, 2, ["database.url", "DATABASE_URL"]),
    (["scheduler"], {}, {"DATABASE_URL": "notaurl"}, 2, ["database.url", "DATABASE_URL"]),
    (
        ["fold"],
        {},
        {"DATABASE_URL": "postgresql://u:secret@db/x"},
        2,
        ["database.url", "'postgresql'", "SQLite", "MySQL/MariaDB"],
    ),
    (
        ["fold"],
        {},
        {"DATABASE_URL": "mysql+pymysql://root:pa@ss:secret@db/x"},
        2,
        ["database.url", "not a database URL"],
    ),  # a bad port
    (["fold"], {"logging.level": "LOUD"}, {}, 2, ["logging.level", "LOUD"]),
    (["fold"], {"logging.rotation": "sometimes"}, {}, 2, ["logging.rotation", "sometimes"]),
    (["fold"], {"logging.retention": "forever"}, {}, 2, ["logging.retention", "forever"]),
    (["fold"], {"logging.dir": "{tmp}/a-file/logs"}, {}, 2, ["logging.dir", "a-file/logs", "Not a directory"]),
    (["scheduler"], {"scheduler.report_cron": "bad cron"}, {}, 2, ["scheduler.report_cron", "fields"]),
    (["fold"], {"scheduler.report_cron": "bad cron"}, {}, 2, ["scheduler.report_cron", "fields"]),
    (["fold"], None, {"AZAMRECON_CONFIG": "{tmp}"}, 2, ["cannot read config file", "{tmp}", "Is a directory"]),
    (["report", "--as-of", "0001-01-01"], {}, {}, 2, ["--as-of", "0001-01-01"]),
    (["rebuild", "--as-of", "9999-12-31T23:59:59-05:00"], {}, {}, 2, ["--as-of", "9999-12-31T23:59:59-05:00"]),
    (["report", "--date", "9999-12-31"], {}, {}, 2, ["--date", "9999-12-31", "between 1000 and 9998"]),
    (
        ["fold"],
        {"database.url": "sqlite:///{tmp}/never-created.db"},
        {},
        4,
        ["sqlite:///{tmp}/never-created.db does not exist", "--config", "DATABASE_URL", "--env-file", "azamrecon init"],
    ),
    # an existing empty file is an empty SQLite database
    (["fold"], {"database.url": "sqlite:///{tmp}/a-file"}, {}, 4, ["no such table", "run `azamrecon init`"]),
    (["fold"], {}, {"DATABASE_URL": "mysql+pymysql://u:secret@127.0.0.1:1/x"}, 4, ["127.0.0.1", "unreachable"]),
    (["report"], None, {"AZAMRECON_ENV_FILE": "{tmp}/no.env"}, 2, ["env file not found", "{tmp}/no.env"]),
]


@pytest.fixture(autouse=True)
def reset_logging():
    """The CLI configures loguru's global sinks (one on the runner's stderr); undo that after each test."""
    yield
    logger.remove()
    logger.configure(patcher=None, extra={})


def hermetic(environ: dict) -> dict:
    """Only the case's own variables: none of the caller's overrides, and no AZAMRECON_DEBUG re-raising."""
    cleared = {name: None for name in [*ENV_OVERRIDES, "AZAMRECON_CONFIG", "AZAMRECON_ENV_FILE", "AZAMRECON_DEBUG"]}
    return cleared | environ


@pytest.mark.parametrize(
    "args,settings,environ,code,texts", CASES, ids=[f"{a[0]}-{i}" for i, (a, *_) in enumerate(CASES)]
)
def test_bad_setup_is_one_error_line(sqlite_backend, tmp_path, args, settings, environ, code, texts):
    tmp = str(tmp_path)
    (tmp_path / "a-file").write_text("")
    fill = lambda value: value.replace("{tmp}", tmp) if isinstance(value, str) else value  # noqa: E731
    if settings is not None:
        values = config_settings(sqlite_backend) | {key: fill(value) for key, value in settings.items()}
        args = [*args, "--config", str(write_config(tmp_path / "config.yaml", values))]
    result = CliRunner().invoke(cli, args, env=hermetic({name: fill(value) for name, value in environ.items()}))
    assert isinstance(result.exception, (SystemExit, type(None))), repr(result.exception)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:"), result.stderr
    for text in texts:
        assert fill(text) in errors[0]
    assert "secret" not in errors[0]  # a database URL's password never reaches the message


def test_a_missing_mysql_table_hints_at_init():
    missing = ProgrammingError(
        "SELECT 1 FROM job_runs", {}, pymysql.err.ProgrammingError(1146, "Table 'x.job_runs' doesn't exist")
    )
    assert str(translate(missing)).endswith("(run `azamrecon init`)")


@pytest.mark.skipif(importlib.util.find_spec("MySQLdb") is not None, reason="mysqlclient is installed here")
def test_a_url_naming_a_missing_driver_is_a_config_error():
    with pytest.raises(ConfigError, match="database.url.*MySQLdb"):
        make_engine(DatabaseConfig(url="mysql+mysqldb://u@db/x"))


@pytest.mark.parametrize("text", ["0001-01-01", "0999-12-31T23:59:59Z", "9999-12-31T23:59:59-05:00", "9999-06-01"])
def test_instants_date_arithmetic_would_overflow_are_refused(text):
    with pytest.raises(ValueError):
        parse_utc(text)
