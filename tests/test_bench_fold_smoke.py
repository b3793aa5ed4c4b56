"""bench.fold and bench.poll run (`--quick`, SQLite) and report sane invariants. No test asserts a time.

bench.fold: the state after a rebuild equals the state after an incremental fold of the same log, every
event is accounted for in each phase, COMPLETED donations and credits agree. bench.poll: every stuck
donation was asked once and its answer appended.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.servers import REPO


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_bench_fold_quick(tmp_path):
    out, profile = tmp_path / "fold.json", tmp_path / "rebuild-profile.txt"
    done = _run("bench.fold", "--quick", "--db", "sqlite", "--json", str(out), "--profile", str(profile))
    assert "rebuild/ceiling" in done.stdout and "rebuild/naive" in done.stdout
    assert "run_fold" in profile.read_text()  # pyinstrument's call tree reaches the fold
    assert "state after rebuild == state after incremental fold: yes" in done.stdout
    figures = json.loads(out.read_text())
    results, events = figures["results"], figures["events"]
    assert results["ceiling"]["events"] == events
    assert results["rebuild"]["events"] == events
    assert results["incremental"]["events"] == events
    assert results["incremental"]["batches"] >= events // results["incremental"]["batch_size"]
    assert results["naive"]["events"] == figures["naive_events"]
    assert results["rebuild_small"]["events"] == figures["small_events"]
    rebuilt, incremental = results["digest_rebuild"], results["digest_incremental"]
    assert rebuilt["sha256"] == incremental["sha256"]
    assert rebuilt["donations"] == figures["donations"]
    assert rebuilt["credits"] == rebuilt["statuses"].get("COMPLETED", 0) == results["rebuild"]["credits"] > 0
    assert set(rebuilt["anomalies"]) >= {"duplicate", "unknown_reference", "invalid_payload", "amount_mismatch"}
    assert sum(rebuilt["anomalies"].values()) == results["rebuild"]["anomalies"]
    writes = results["writes"]  # the write ceiling rewrote exactly what the rebuild wrote
    assert (writes["anomalies"], writes["donations"], writes["credits"]) == (
        results["rebuild"]["anomalies"],
        figures["donations"],
        rebuilt["credits"],
    )
    assert "storage floor" in done.stdout and "rebuild/storage floor" in done.stdout
    # the in-memory fold the rules phase times is the rebuild's own state, not some lighter work
    assert results["rules"]["events"] == events and results["rules"]["sha256"] == rebuilt["sha256"]
    assert "state of the in-memory fold (rules) == state after rebuild: yes" in done.stdout
    assert "rebuild/serial floor" in done.stdout and "two-core bound" in done.stdout
    for phase in ("ceiling", "writes", "rules", "naive", "rebuild", "incremental", "rebuild_small"):
        assert results[phase]["seconds"] > 0 and results[phase]["rss_mb"] > 0
    assert "synchronous=FULL" in figures["settings"]


def test_bench_poll_quick(tmp_path):
    out = tmp_path / "poll.json"
    done = _run("bench.poll", "--quick", "--db", "sqlite", "--json", str(out))
    assert "invariant every donation asked once and answered: OK" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["checked"] == figures["appended"] == figures["donations"] == figures["fold_events"]
    assert figures["status_calls"] >= figures["donations"]
    assert figures["errors"] == 0
    assert figures["success"] == figures["credits"] > 0
