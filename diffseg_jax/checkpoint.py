"""A thin wrapper over orbax's CheckpointManager: save/restore a train-state pytree by step."""

from __future__ import annotations

import pathlib
from typing import Any

import orbax.checkpoint as ocp


class Checkpoints:
    """`latest` keeps the newest `max_to_keep` steps (resume); `best_metric` keeps the best by a metric."""

    def __init__(
        self,
        directory: str | pathlib.Path,
        max_to_keep: int | None = 2,
        best_metric: str | None = None,
    ):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            best_fn=(lambda m: m[best_metric]) if best_metric else None,
            best_mode="max",
            enable_async_checkpointing=False,
        )
        self.directory = pathlib.Path(directory).absolute()
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._best_metric = best_metric

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        return self._manager.best_step()

    def save(self, step: int, state: Any, metrics: dict[str, float] | None = None) -> None:
        if self._best_metric and metrics is None:
            raise ValueError("a best-by-metric checkpoint needs metrics")
        self._manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
        self._manager.wait_until_finished()

    def restore(self, step: int, target: Any) -> Any:
        """Restores into the structure, dtypes and shardings of `target` (a pytree of arrays)."""
        return self._manager.restore(step, args=ocp.args.StandardRestore(target))

    def close(self) -> None:
        self._manager.close()
