"""Relative paths in the config, anchored to the config file's directory (pipeline.config.load_config)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import Config

# Every config value that names a file or directory; relative ones are anchored by anchor_paths.
RELATIVE_PATHS = (
    "database.url",
    "logging.dir",
    "receiver.spool_dir",
    "receiver.metrics_dir",
    "scheduler.reports_dir",
    "privacy.key_file",
    "webhook.signature_public_key_pem",
)


def anchor_paths(config: Config, base: Path) -> Config:
    """`config` with RELATIVE_PATHS made absolute from `base`: the same files whatever the working directory
    (`poll` run from another directory created a stray logs/ there). PEM text and a non-file SQLite URL
    (:memory:) are left as they are."""
    for dotted in RELATIVE_PATHS:
        section_name, key = dotted.split(".")
        section = getattr(config, section_name)
        value = getattr(section, key)
        if dotted == "database.url":
            anchored = _anchored_sqlite_url(value, base)
        elif not value or value.lstrip().startswith("-----BEGIN"):
            anchored = value
        else:
            anchored = str(base / value)  # an absolute value stays itself
        if anchored != value:
            setattr(section, key, anchored)
    return config


def _anchored_sqlite_url(url: str, base: Path) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)  # valid: DatabaseConfig checked it
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return url
    if Path(database).is_absolute():
        return url
    return parsed.set(database=str(base / database)).render_as_string(hide_password=False)
