"""The benchmarks run (`--quick`) and print their table with sane invariants. No test asserts a time.

SQLite only: the MariaDB variant of bench.receiver drops and recreates its own database, which must
never be the one a test session is using.
"""

from __future__ import annotations

import subprocess
import sys

from tests.servers import REPO


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _table(output: str) -> list[dict[str, str]]:
    lines = [line for line in output.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, output
    headers = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [
        dict(zip(headers, (cell.strip() for cell in line.strip("|").split("|")), strict=True)) for line in lines[2:]
    ]


def _number(text: str) -> float:
    return float(text.replace(",", "").rstrip("x"))


def test_bench_receiver_quick():
    done = _run("bench.receiver", "--quick", "--db", "sqlite", "--driver", "python")
    rows = _table(done.stdout)
    assert [(row["db"], row["conns"]) for row in rows] == [("sqlite", "1"), ("sqlite", "8"), ("sqlite", "64")]
    for row in rows:
        assert _number(row["2xx"]) > 0
        assert row["db rows"] == row["2xx"]  # every acknowledged callback is durable, and nothing else was stored
        assert row["cut"] == "0"
        assert _number(row["p50 ms"]) <= _number(row["p99 ms"])
        for column in ("receiver/s", "no-op/s", "naive/s", "storage/s"):
            assert _number(row[column]) > 0
        for column in ("rcv/no-op", "rcv/naive", "rcv/storage"):
            assert row[column].endswith("x") and _number(row[column]) > 0
    assert "invariant db rows == answers (all 2xx): OK" in done.stdout
    assert "target sqlite @64 conns" in done.stdout
    (log_line,) = [line for line in done.stdout.splitlines() if line.startswith("sqlite write-ahead log: ")]
    assert _number(log_line.split()[3]) > 0  # the receiver's points wrote through the log


def test_bench_latency_quick():
    done = _run("bench.latency", "--quick")
    (row,) = _table(done.stdout)
    assert row["db"] == "sqlite"
    assert _number(row["callbacks"]) > 0
    assert row["2xx"] == row["callbacks"] == row["COMPLETED"]  # every callback's donation reached COMPLETED
    assert 0 < _number(row["p50 ms"]) <= _number(row["p99 ms"]) <= _number(row["max ms"])
    assert row["result"] in ("MET", "NOT MET")
