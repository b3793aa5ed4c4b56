"""The one place that touches loguru's private API (the pin in pyproject.toml names the versions it was
written for; tests/test_loguru_adapter.py fails when an upgrade changes what it relies on).

- loguru's own parsers for a size, a rotation and a retention setting (loguru._string_parsers and the
  private factory methods of loguru._file_sink.FileSink): config rejects a bad value at load time, and
  pipeline.logs turns a size into its own rotation, both with loguru's grammar rather than a copy of it;
- loguru's FileSink (rotation, retention, encoding, opener, watch) for the receiver's batched sink;
- the identity of loguru's handler table and its activation state, so that the receiver's fast payments
  line knows the handlers are still the ones it was built for.
"""

from __future__ import annotations

from typing import Any

from loguru import logger


def parse_size(text: str) -> float | None:
    """loguru's size grammar ("10 MB"): bytes, or None when `text` is not a size."""
    from loguru._string_parsers import parse_size as loguru_parse_size

    try:
        return loguru_parse_size(text)
    except ValueError:
        return None


def check_rotation(value: str) -> None:
    """Raises (ValueError or TypeError) when loguru would reject `value` as a file sink's rotation."""
    from loguru._file_sink import FileSink

    FileSink._make_rotation_function(value)


def check_retention(value: str) -> None:
    """Raises (ValueError or TypeError) when loguru would reject `value` as a file sink's retention."""
    from loguru._file_sink import FileSink

    FileSink._make_retention_function(value)


def file_sink(path: str, **options: Any) -> Any:
    """loguru's own file sink (what logger.add(path, ...) builds): `.write(text)` and `.stop()`."""
    from loguru._file_sink import FileSink

    return FileSink(path, **options)


def handlers_token() -> object:
    """Identifies the current handler set: loguru replaces its handler table on every add() and remove()."""
    return logger._core.handlers


def handlers_unchanged(token: object) -> bool:
    """True while the handlers are the set `token` identified and no logger.enable/disable is in force."""
    core = logger._core
    return core.handlers is token and core.activation_none and not core.activation_list
