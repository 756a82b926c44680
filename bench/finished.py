"""Whether a run in a workdir trained to its end (the benchmark scripts reuse finished runs only)."""

from __future__ import annotations

import json
import pathlib


def trained(workdir: pathlib.Path) -> bool:
    """True when run_train.py finished there; a run stopped early (SIGTERM, stop_after) is resumed instead."""
    path = pathlib.Path(workdir) / "train_summary.json"
    if not path.exists():
        return False
    summary = json.loads(path.read_text())
    return bool(summary.get("finished", True))  # summaries without the field predate it: finished runs
