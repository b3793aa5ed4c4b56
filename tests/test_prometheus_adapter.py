"""Contract: what receiver/prometheus_adapter.py relies on in prometheus_client's multiprocess mode.

A worker process (PROMETHEUS_MULTIPROC_DIR set before prometheus_client is imported) increments a real
Counter; the adapter must find its file by name, read its value, and write a file MultiProcessCollector
sums like a worker's own. An upgrade that renames the files or changes MmapedDict fails here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from receiver.prometheus_adapter import counter_files, read_counter_values, write_counter_file

REPO = Path(__file__).resolve().parent.parent

WORKER = """
from prometheus_client import Counter
Counter("azamrecon_contract_total", "a contract test counter").inc(3)
"""

SCRAPE = """
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
registry = CollectorRegistry()
MultiProcessCollector(registry)
print(generate_latest(registry).decode())
"""


def _run(code: str, directory: Path) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _total(text: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith("azamrecon_contract_total ")]
    return float(line.split()[1])


def test_a_workers_counter_file_is_found_by_name_and_read(tmp_path):
    _run(WORKER, tmp_path)
    [(path, pid)] = list(counter_files(tmp_path))
    assert pid.isdigit() and path.name == f"counter_{pid}.db"
    values = dict(read_counter_values(path))
    [key] = [key for key in values if "azamrecon_contract_total" in key]
    assert values[key] == 3.0


def test_a_written_counter_file_is_summed_like_a_workers_own(tmp_path):
    _run(WORKER, tmp_path)
    [(path, _pid)] = list(counter_files(tmp_path))
    values = dict(read_counter_values(path))
    write_counter_file(tmp_path / "counter_compacted.db", {key: value * 2 for key, value in values.items()})
    assert _total(_run(SCRAPE, tmp_path)) == 3.0 + 6.0
    assert {name for _path, name in counter_files(tmp_path)} >= {"compacted"}
