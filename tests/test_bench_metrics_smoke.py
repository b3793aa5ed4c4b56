"""bench.metrics runs and prints its table and ratio, both sizes with the same open work. No test asserts a time."""

from __future__ import annotations

import subprocess
import sys

from tests.servers import REPO


def test_bench_metrics_small_sizes():
    done = subprocess.run(
        [sys.executable, "-m", "bench.metrics", "--sizes", "1000,4000", "--scrapes", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("|")]
    headers = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [
        dict(zip(headers, (cell.strip() for cell in line.strip("|").split("|")), strict=True)) for line in lines[2:]
    ]
    assert [(row["db"], row["events"]) for row in rows] == [("sqlite", "1,000"), ("sqlite", "4,000")]
    # a fixed number of statements per scrape, whatever the log's size
    assert rows[0]["statements"] == rows[1]["statements"] and 0 < int(rows[0]["statements"]) < 40
    # the log grows, the open work does not: same PENDING/REVIEW donations, same events waiting
    assert rows[0]["open"] == rows[1]["open"] and rows[0]["waiting"] == rows[1]["waiting"]
    assert int(rows[0]["open"].replace(",", "")) > 0 and int(rows[0]["waiting"].replace(",", "")) > 0
    assert rows[0]["donations"] != rows[1]["donations"] and rows[0]["job_runs"] != rows[1]["job_runs"]
    assert "waiting" in done.stdout and ": equal" in done.stdout
    for row in rows:
        assert float(row["p50 ms"].replace(",", "")) <= float(row["p99 ms"].replace(",", ""))
    assert "ratio p50 4,000 / 1,000 events: " in done.stdout
