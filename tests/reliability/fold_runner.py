"""A small fold process for the crash tests: `python -m tests.reliability.fold_runner CONFIG MODE HOOK_AT`.

MODE picks where the process stops to be killed (it prints "HOOK <name>" and sleeps at the HOOK_AT-th
time it passes that point, so the parent's `kill -9` lands exactly there):
  mid-batch      after the batch's donations are written, before its anomalies, credits and checkpoint
  before-commit  after the checkpoint is written, before COMMIT
  rebuild-reset  during a rebuild, after the derived tables were emptied, before that COMMIT
  rebuild-fold   during a rebuild's fold, before a batch's COMMIT
  loop           no hook: folds until the log is exhausted, `HOOK_AT` times (killed at a random moment)
  duration       no hook: folds again and again (every 20 ms) for `HOOK_AT` seconds, then exits
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

from jobs.fold import run_fold
from jobs.rebuild import rebuild
from pipeline.config import load_config
from pipeline.db import make_engine
from pipeline.store.state import SqlFoldStore


def hook_after(cls, name: str, label: str, hook_at: int) -> None:
    original = getattr(cls, name)
    seen = {"n": 0}

    def wrapped(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        seen["n"] += 1
        if seen["n"] == hook_at:
            self.session.flush()
            print(f"HOOK {label}", flush=True)
            time.sleep(60)  # the parent kills us here
        return result

    setattr(cls, name, wrapped)


def main(config_path: str, mode: str, hook_at: int) -> None:
    config = load_config(config_path, environ={})
    engine = make_engine(config.database)
    now = datetime.now(UTC)
    print("READY", flush=True)
    if mode == "mid-batch":
        hook_after(SqlFoldStore, "write_donations", mode, hook_at)
    elif mode in ("before-commit", "rebuild-fold"):
        hook_after(SqlFoldStore, "save_checkpoint", mode, hook_at)
    elif mode == "rebuild-reset":
        hook_after(SqlFoldStore, "reset_derived", mode, 1)
    if mode == "duration":
        deadline = time.monotonic() + hook_at
        while time.monotonic() < deadline:
            run_fold(engine, config, datetime.now(UTC))
            time.sleep(0.02)
    elif mode.startswith("rebuild"):
        rebuild(engine, config, now)
    else:
        for _ in range(hook_at if mode == "loop" else 1):
            run_fold(engine, config, now)
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
