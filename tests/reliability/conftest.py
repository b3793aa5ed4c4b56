"""Fixtures of the reliability suite (faults, concurrency, hostile input, security).

`--long` (declared in tests/conftest.py: pytest only reads options from the root conftest) selects the
longer variants. Every test records its figures as JSON lines in $AZAMRECON_RELIABILITY_OUT/figures.jsonl
(default: <tmp>/azamrecon-reliability); `python -m tests.reliability.report` renders them as the table
of docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest


def out_dir() -> Path:
    path = Path(os.environ.get("AZAMRECON_RELIABILITY_OUT") or Path(tempfile.gettempdir()) / "azamrecon-reliability")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Figures:
    """Appends one JSON line per finished fault/attack row to figures.jsonl."""

    def __init__(self, node_id: str, long: bool):
        self.node_id, self.long = node_id, long

    def record(self, row: str, tried: str, runs: int, outcome: dict, command: str | None = None) -> None:
        line = {
            "row": row,
            "tried": tried,
            "runs": runs,
            "outcome": outcome,
            "command": command or f"pytest {self.node_id}" + (" --long" if self.long else ""),
            "long": self.long,
            "test": self.node_id,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with open(out_dir() / "figures.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, sort_keys=True) + "\n")


@pytest.fixture
def long_run(request) -> bool:
    return bool(request.config.getoption("--long", default=False))


@pytest.fixture
def figures(request, long_run) -> Figures:
    return Figures(request.node.nodeid, long_run)


def pytest_configure(config):
    # module-level settings (Hypothesis/Schemathesis decorators) cannot see fixtures; they read this
    if config.getoption("--long", default=False):
        os.environ["AZAMRECON_RELIABILITY_LONG"] = "1"
