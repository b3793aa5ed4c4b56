"""The one place that touches prometheus_client's multiprocess internals: its per-process counter files.

`compact` (receiver.metrics) folds the files of exited workers into one. prometheus_client has no public API
for that, so this module names what it relies on: the `counter_<pid>.db` file names and `MmapedDict`'s
reader and writer. tests/test_prometheus_adapter.py holds them to the installed version (pinned in
pyproject.toml), so an upgrade that changes them fails there, not in production.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Mapping
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict

COUNTER_GLOB = "counter_*.db"  # MultiProcessValue's file name for a counter: "{type}_{pid}.db"


def counter_files(directory: Path) -> Iterator[tuple[Path, str]]:
    """(file, the part after "counter_": a pid, or another name) for every counter file in the directory."""
    for name in glob.glob(str(directory / COUNTER_GLOB)):
        path = Path(name)
        yield path, path.stem.split("_", 1)[1]


def read_counter_values(path: Path) -> Iterator[tuple[str, float]]:
    """(series key, value) for every series in one counter file."""
    for key, value, _timestamp, _position in MmapedDict.read_all_values_from_file(str(path)):
        yield key, value


def write_counter_file(path: Path, values: Mapping[str, float]) -> None:
    """A counter file holding `values`, readable by MultiProcessCollector like a worker's own."""
    written = MmapedDict(str(path))
    try:
        for key, value in values.items():
            written.write_value(key, value, 0.0)
    finally:
        written.close()
