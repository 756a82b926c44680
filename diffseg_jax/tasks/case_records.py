"""Evaluations that resume case by case: each finished unit of work is recorded, a rerun skips it.

A unit (a case, or a case and a sequence) writes its result to `<out>/cases/<name>.json` together with a
fingerprint of the checkpoint step and the whole config (network included). A rerun with the same
fingerprint reads the record instead of recomputing it, so an evaluation stopped by SIGTERM/SIGINT (after the
unit it is on: `stop_signal.Stopped`) or killed resumes where it was; a changed setting or a newer checkpoint
recomputes everything. Tables (metrics.json, per_case.csv) are written only once every unit is finished.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from tqdm.auto import tqdm

from diffseg_jax import outputs, stop_signal

Record = dict[str, Any]


def fingerprint(config: ml_collections.ConfigDict, step: int) -> str:
    """What a finished unit's result depends on: the checkpoint step and the whole config (the network, the
    diffusion, and every data, eval and sampling setting)."""
    parts = [step, config.to_dict()]
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class CaseRecords:
    """The finished units of one evaluation under `<out_dir>/cases/`."""

    def __init__(self, out_dir: pathlib.Path, config: ml_collections.ConfigDict, step: int):
        self.folder = pathlib.Path(out_dir) / "cases"
        self.fingerprint = fingerprint(config, step)

    def _path(self, name: str) -> pathlib.Path:
        return self.folder / f"{name}.json"

    def finished(self, name: str) -> Record | None:
        """The unit's record when it was finished with the same fingerprint, else None."""
        try:
            record = json.loads(self._path(name).read_text())
        except (OSError, ValueError):
            return None
        if record.pop("fingerprint", None) != self.fingerprint:
            return None
        return record

    def save(self, name: str, record: Record) -> None:
        outputs.write_json(self._path(name), {"fingerprint": self.fingerprint, **record})

    def get(self, name: str, compute: Callable[[], Record]) -> Record:
        """The finished record of `name`, or `compute()` recorded."""
        record = self.finished(name)
        if record is None:
            record = compute()
            self.save(name, record)
        return record

    def run(
        self,
        names: Sequence[str],
        compute: Callable[[int, str], Record],
        desc: str,
        progress: bool,
        unit: str = "cases",
    ) -> list[Record]:
        """Every unit's record in order (`compute(index, name)` for the unfinished ones).

        A SIGTERM/SIGINT lets the unit in progress finish and be recorded, then raises `stop_signal.Stopped`.
        """
        records: list[Record] = []
        with stop_signal.StopRequest() as stop:
            for index, name in enumerate(tqdm(names, desc=desc, disable=not progress)):
                records.append(self.get(name, lambda index=index, name=name: compute(index, name)))
                if stop.requested and index + 1 < len(names):
                    done = f"{index + 1} of {len(names)} {unit}"
                    raise stop_signal.Stopped(f"evaluation stopped after {done} (saved)")
        return records
