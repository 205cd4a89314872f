"""generations.jsonl: one row per (example, condition) that `kvproj evaluate` generated (id, condition, prompt,
generated, answer, correct, answer_nll, ...). Written beside results.json; read back by the scripts that study
what the target wrote (scripts/near_misses.py, scripts/flips.py). Imports nothing heavy, so those start at once."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kvproj.atomic import atomic_write

FILENAME = "generations.jsonl"


def write_generations(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """All rows, one JSON object per line, written atomically."""
    atomic_write(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a generations file, in file order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def read_generations(path: str | Path, condition: str) -> list[dict[str, Any]]:
    """The rows of one condition, in file order. Raises ValueError naming the conditions the file holds when it has
    no row of `condition`."""
    rows = read_rows(path)
    picked = [r for r in rows if r["condition"] == condition]
    if not picked:
        there = ", ".join(dict.fromkeys(r["condition"] for r in rows)) or "none"
        raise ValueError(f"no rows for {condition!r} in {path}; conditions there: {there}")
    return picked
