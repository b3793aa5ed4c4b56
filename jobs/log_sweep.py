"""Log files past the retention (docs/privacy.md): rotated files last written before the cutoff are deleted,
live files last written before it emptied in place (their writers append, so they go on at the new end).
Spool files are only reported: nothing received is thrown away. Run by jobs/retain.py.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime
from pathlib import Path

from loguru import logger

from pipeline.logs import LOG_FILE_MODE, LOG_FILES
from pipeline.rewrites import is_rotated_log


def sweep_logs(directory: Path, cutoff: datetime, dry_run: bool = False) -> dict[str, int]:
    """Log files past the retention: a rotated one last written before the cutoff is deleted; a live one
    (payments.log, errors.log, app.log) last written before it holds only such lines and is emptied in
    place. Lines rotate by local day (logging.timezone; pipeline.logs.SizeRotation), so a file's age is its newest line's.
    What stays is narrowed to 0640 (files an older version left 0644)."""
    counts = {"log_files_deleted": 0, "log_files_emptied": 0}
    if not directory.is_dir():
        return counts
    limit = cutoff.timestamp()
    for path in sorted(directory.iterdir()):
        live = path.name in LOG_FILES
        if not path.is_file() or not (live or is_rotated_log(path.name)):
            continue
        try:
            status = path.stat()
            if status.st_mtime < limit:
                if live and status.st_size:
                    counts["log_files_emptied"] += 1
                    if not dry_run:
                        os.truncate(path, 0)
                    continue
                if not live:
                    counts["log_files_deleted"] += 1
                    if not dry_run:
                        path.unlink()
                    continue
            if not dry_run and status.st_mode & 0o777 & ~LOG_FILE_MODE:
                os.chmod(path, status.st_mode & LOG_FILE_MODE)
        except FileNotFoundError:  # loguru's own retention got there first
            continue
        except OSError as exc:
            logger.warning(f"privacy retain: cannot clean {path}: {exc.strerror or exc}")
    return counts


def stale_spool_files(directory: Path, cutoff: datetime) -> list[Path]:
    """Spool files last written before the cutoff: never deleted here (nothing received is thrown away)."""
    stale = []
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            with contextlib.suppress(FileNotFoundError):  # replayed and deleted meanwhile
                if path.is_file() and path.stat().st_mtime < cutoff.timestamp():
                    stale.append(path)
    return stale
