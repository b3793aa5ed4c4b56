"""Fault 2: `kill -9` a real fold process at chosen points, at least 20 times: mid-batch (donations
written, credits not), between the checkpoint write and COMMIT, during a rebuild (after the reset, and
during its fold), and at random moments. The log keeps growing between kills. After a restart the state
equals a rebuild (jobs.rebuild.check and the `rebuild --check` CLI: zero differences), the invariants
hold and no donation has two credits."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from jobs.fold import run_fold
from jobs.rebuild import check
from pipeline.db import transaction
from pipeline.store.state import SqlFoldStore
from tests.reliability.helpers import credits_per_donation, kill9
from tests.reliability.logmaker import LogMaker
from tests.servers import REPO, config_settings, run_cli, write_config

MODES = ("mid-batch", "before-commit", "rebuild-reset", "rebuild-fold", "loop")


def start_runner(config_path, mode: str, hook_at: int, log_path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.fold_runner", str(config_path), mode, str(hook_at)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=open(log_path, "ab"),
        start_new_session=True,
        text=True,
    )


def wait_for_line(process: subprocess.Popen, prefix: str, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            return None  # exited
        if line.startswith(prefix):
            return line.strip()
    return None


@pytest.mark.parametrize("db", ["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def test_kill9_fold_then_state_equals_rebuild(db, request, tmp_path, long_run, figures):
    backend = request.getfixturevalue("sqlite_backend" if db == "sqlite" else "mysql_backend")
    kills_wanted = 60 if long_run else 22
    config_path = write_config(tmp_path / "fold.yaml", config_settings(backend, **{"fold.batch_size": 7}))
    config = backend.config(**{"fold.batch_size": 7})
    maker = LogMaker(backend.engine, seed=11)
    rng = random.Random(3)
    killed: dict[str, int] = {mode: 0 for mode in MODES}
    completed = 0
    for attempt in range(2 * kills_wanted):  # bounded; stops once enough kills landed
        if sum(killed.values()) >= kills_wanted:
            break
        maker.grow(new_donations=3, events=rng.randint(20, 45))
        mode = MODES[attempt % len(MODES)]
        hook_at = 1 if mode.startswith("rebuild") else rng.randint(1, 3)  # a rebuild of this log is one batch
        runner = start_runner(config_path, mode, hook_at if mode != "loop" else 50, tmp_path / "runner.stderr")
        try:
            assert wait_for_line(runner, "READY", 30), (tmp_path / "runner.stderr").read_text()[-2000:]
            if mode == "loop":
                time.sleep(rng.uniform(0.0, 0.25))
                hit = runner.poll() is None
            else:
                hit = wait_for_line(runner, "HOOK", 30) is not None
        finally:
            kill9(runner)
        if hit:
            killed[mode] += 1
        else:
            completed += 1
        # invariants hold at every committed state, even right after a kill
        with transaction(backend.engine) as session:
            assert SqlFoldStore(session).invariant_violations() == []
    run_fold(backend.engine, config, datetime.now(UTC))
    result = check(backend.engine, config)
    with transaction(backend.engine) as session:
        problems = SqlFoldStore(session).invariant_violations()
    credits = credits_per_donation(backend.engine)
    doubles = [d for d, n in credits.items() if n > 1]
    cli = run_cli("rebuild", "--check", "--no-progress", config_path=config_path, timeout=120)
    events = backend.scalar("SELECT COUNT(*) FROM payment_events")
    figures.record(
        f"2. fold kill -9 ({db})",
        "kill -9 of a fold process: mid-batch, between checkpoint write and COMMIT, during a rebuild (after reset, mid-fold), at random; log grows between kills",
        sum(killed.values()),
        {
            "kills by point": ", ".join(f"{k} {v}" for k, v in killed.items()),
            "rebuild --check differences": len(result.differences),
            "invariant violations": len(problems),
            "donations credited twice": len(doubles),
            "events": events,
            "credits": len(credits),
        },
    )
    assert sum(killed.values()) >= 20, killed
    assert all(killed[mode] for mode in MODES), killed
    assert result.differences == [], result.differences[:10]
    assert problems == []
    assert doubles == []
    assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-2000:]
    assert len(credits) > 10
