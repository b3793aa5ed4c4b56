"""The disk spool: where callbacks go when the database is unreachable, durably (write + fsync) before the 503.

One file per process, `callbacks-<host>-<pid>-<random>.jsonl` under receiver.spool_dir, written under
an exclusive flock. The ingest job (jobs.spool) claims a file by renaming it while holding the same
lock; the writer notices on its next write (the path no longer names its open file) and starts a new
file, so nothing is ever appended to a claimed file.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.store.spool import SUFFIX, encode_record


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._prefix = f"callbacks-{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._sequence = 0

    @property
    def path(self) -> Path | None:
        """The file currently written (None before the first write)."""
        return self._path

    def write(self, records: Sequence[dict[str, Any]]) -> Path:
        """Append the records as JSON lines, flush and fsync. Raises OSError when that is not possible."""
        data = b"".join(encode_record(record) for record in records)
        with self._lock:
            fd = self._open_locked()
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            except OSError:
                # a partial line may be on disk: never append after it, start a new file next time
                self._close()
                raise
            finally:
                if self._fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            return self._path

    def _open_locked(self) -> int:
        """The current file's descriptor, exclusively locked, still named by its path (i.e. not claimed)."""
        for _ in range(100):
            if self._fd is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._sequence += 1
                path = self.directory / f"{self._prefix}-{self._sequence}{SUFFIX}"
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                self._path = path
                _fsync_directory(self.directory)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                same = os.stat(self._path).st_ino == os.fstat(self._fd).st_ino
            except FileNotFoundError:
                same = False
            except OSError:
                # the spool directory is unusable (a failing disk, a path replaced): do not leave with the
                # lock held, or the ingest job could never claim this file while the receiver runs
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._close()
                raise
            if same:
                return self._fd
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._close()  # claimed by the ingest job: start a new file
        raise OSError("spool file keeps being claimed while opening")

    def _close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None

    def close(self) -> None:
        with self._lock:
            self._close()
