"""Render the figures recorded by tests/reliability as a Markdown table (the last record of each row wins).

python -m tests.reliability.report [DIR]      # DIR defaults to $AZAMRECON_RELIABILITY_OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.reliability.conftest import out_dir


def render(directory: Path) -> str:
    rows: dict[str, dict] = {}
    for line in (directory / "figures.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            rows[record["row"]] = record
    out = ["| fault or attack | what was tried | runs | outcome | reproduce |", "|---|---|---|---|---|"]
    for name in sorted(rows):
        record = rows[name]
        outcome = "; ".join(f"{key} {value}" for key, value in record["outcome"].items())
        out.append(f"| {name} | {record['tried']} | {record['runs']} | {outcome} | `{record['command']}` |")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(Path(sys.argv[1]) if len(sys.argv) > 1 else out_dir()))
