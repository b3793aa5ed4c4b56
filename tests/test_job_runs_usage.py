"""A usage error (a typo, an unknown donation) is not a failed run of the job: job_runs keeps no row for it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from jobs.cli import cli
from jobs.runs import recorded_run
from pipeline.errors import InputError, NotFound
from tests.servers import config_settings, write_config


def _runs(backend) -> list[tuple]:
    return [tuple(row) for row in backend.rows("SELECT job, outcome FROM job_runs ORDER BY id")]


def test_poll_of_an_unknown_donation_is_not_a_failed_run(backend, tmp_path, now):
    config = write_config(tmp_path / "config.yaml", config_settings(backend))
    result = CliRunner().invoke(cli, ["poll", "--donation", "999", "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 3 and "donation 999 not found" in result.stderr
    assert _runs(backend) == []


@pytest.mark.parametrize("error", [NotFound("donation 999 not found"), InputError("bad --limit")])
def test_usage_errors_leave_no_row_and_still_raise(backend, now, error):
    with pytest.raises(type(error)):
        with recorded_run(backend.engine, "poll", now):
            raise error
    assert _runs(backend) == []


def test_a_real_failure_is_still_recorded(backend, now):
    with pytest.raises(RuntimeError):
        with recorded_run(backend.engine, "poll", now):
            raise RuntimeError("AzamPay answered nonsense")
    with recorded_run(backend.engine, "poll", now):
        pass
    assert _runs(backend) == [("poll", "error"), ("poll", "ok")]
