"""Contract of pipeline.loguru_adapter with the installed loguru: every private name it uses still exists and
behaves as the adapter's callers (pipeline.config, pipeline.logs, receiver.logsink) rely on."""

from __future__ import annotations

import pytest
from loguru import logger

from pipeline import loguru_adapter
from pipeline.logs import open_log_file


@pytest.mark.parametrize(
    ("text", "size"), [("10 MB", 10_000_000), ("1 KiB", 1024), (" 500 B ", 500), ("daily", None), ("1 week", None)]
)
def test_parse_size(text, size):
    assert loguru_adapter.parse_size(text) == size


def test_parse_size_of_a_malformed_number_is_none():
    assert loguru_adapter.parse_size("1.2.3 MB") is None


@pytest.mark.parametrize("value", ["10 MB", "00:00", "1 week", "daily"])
def test_loguru_accepts_these_rotations(value):
    loguru_adapter.check_rotation(value)


@pytest.mark.parametrize("value", ["30 days", "2 weeks", "1 week"])
def test_loguru_accepts_these_retentions(value):
    loguru_adapter.check_retention(value)


@pytest.mark.parametrize("check", [loguru_adapter.check_rotation, loguru_adapter.check_retention])
def test_loguru_rejects_nonsense(check):
    with pytest.raises((ValueError, TypeError)):
        check("every blue moon")


def test_file_sink_writes_rotates_and_stops(tmp_path):
    path = tmp_path / "x.log"
    sink = loguru_adapter.file_sink(
        str(path),
        rotation=lambda message, file: False,
        retention="1 day",
        encoding="utf-8",
        opener=open_log_file,
        watch=True,
    )
    sink.write("one\n")
    sink.write("two\n")
    sink.stop()
    assert path.read_text() == "one\ntwo\n"
    assert path.stat().st_mode & 0o777 == 0o640


def test_the_handler_token_changes_with_the_handlers():
    token = loguru_adapter.handlers_token()
    assert loguru_adapter.handlers_unchanged(token)
    handler = logger.add(lambda message: None)
    try:
        assert not loguru_adapter.handlers_unchanged(token)
        added = loguru_adapter.handlers_token()
        assert loguru_adapter.handlers_unchanged(added)
    finally:
        logger.remove(handler)
    assert not loguru_adapter.handlers_unchanged(added)


def test_a_disabled_module_makes_the_handlers_changed():
    token = loguru_adapter.handlers_token()
    logger.disable("some.module")
    try:
        assert not loguru_adapter.handlers_unchanged(token)
    finally:
        logger.enable("")  # clears every module's entry: the state configure_logging leaves
    assert loguru_adapter.handlers_unchanged(token)
    logger.disable(None)
    try:
        assert not loguru_adapter.handlers_unchanged(token)
    finally:
        logger.enable(None)
    assert loguru_adapter.handlers_unchanged(token)
