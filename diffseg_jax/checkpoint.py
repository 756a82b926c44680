"""Checkpoints: orbax's CheckpointManager by step, and restoring a trained model's parameters.

Restoring builds its target from the train state's structure (`train_state.py`), so evaluation needs no
part of the training loop.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import pathlib
from collections.abc import Iterator
from typing import Any, Literal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from diffseg_jax import parallel
from diffseg_jax.config_defaults import ConfigError
from diffseg_jax.methods.base import Method
from diffseg_jax.train_state import TrainState, create_train_state


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message is one line naming it."""


def reason(err: BaseException) -> str:
    """An exception as one short line (orbax and TensorStore messages run to pages)."""
    return " ".join(str(err).split())[:200] or type(err).__name__


@contextlib.contextmanager
def _without_orbax_logs() -> Iterator[None]:
    """Drops the log records orbax emits (through absl's logger) inside the block."""
    absl_logger = logging.getLogger("absl")
    drop = logging.Filter()
    drop.filter = lambda record: "orbax" not in record.pathname  # type: ignore[method-assign]
    absl_logger.addFilter(drop)
    try:
        yield
    finally:
        absl_logger.removeFilter(drop)


@functools.cache  # once per process
def _write_each_array_whole() -> None:
    """Each array written whole by its first replica. Orbax's default splits a replicated array into one
    slice per replica, an XLA program per shape (compiled in every process): for this project's networks
    that made a save 2-10x slower than the write, and saves are where the trainer waits."""
    handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
    with _without_orbax_logs():  # orbax warns that a handler is replaced: that is the point
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


class Checkpoints:
    """`latest` keeps the newest `max_to_keep` steps (resume); `best_metric` keeps the best by a metric."""

    def __init__(
        self,
        directory: str | pathlib.Path,
        max_to_keep: int | None = 2,
        best_metric: str | None = None,
        best_mode: Literal["max", "min"] = "max",
        cleanup_tmp: bool = False,
    ):
        """`cleanup_tmp`: remove the half-written saves a killed run left (only the run that holds the workdir
        may: a reader could otherwise delete a save in progress)."""
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            cleanup_tmp_directories=cleanup_tmp,
            best_fn=(lambda m: m[best_metric]) if best_metric else None,
            best_mode=best_mode,
            enable_async_checkpointing=False,
        )
        self.directory = pathlib.Path(directory).absolute()
        _write_each_array_whole()
        with _without_orbax_logs():  # it reads every step's metadata; a damaged one is reported on restore
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._best_metric = best_metric

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        return self._manager.best_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def set_aside(self, step: int) -> pathlib.Path:
        """Renames an unreadable step's folder to `<step>.unreadable` (kept for a look, no longer a step)."""
        source = self.directory / str(step)
        target = self.directory / f"{step}.unreadable"
        if source.is_dir():
            source.rename(target)
        self._manager.reload()
        return target

    def save(self, step: int, state: Any, metrics: dict[str, float] | None = None) -> None:
        if self._best_metric and metrics is None:
            raise ValueError("a best-by-metric checkpoint needs metrics")
        try:
            self._manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
            self._manager.wait_until_finished()
        except OSError as err:  # orbax writes to a temporary folder first: the previous steps stay intact
            raise OSError(err.errno, err.strerror or str(err), str(self.directory / str(step))) from err

    def restore(self, step: int, target: Any) -> Any:
        """Restores into the structure, dtypes and shardings of `target` (a pytree of arrays).

        A damaged checkpoint raises; orbax's own log lines about it are held back (the caller's one line
        names it).
        """
        with _without_orbax_logs():
            return self._manager.restore(step, args=ocp.args.StandardRestore(target))

    def restore_as_saved(self, step: int) -> Any:
        """The checkpoint's tree as it was saved (no target: for reading another run's parameters)."""
        return self._manager.restore(step, args=ocp.args.StandardRestore())

    def close(self) -> None:
        self._manager.close()


def restore_params(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    method: Method,
    mesh,
    example_batch: dict[str, np.ndarray],
) -> tuple[Any, int]:
    """(EMA params, step) of `eval.checkpoint`: 'best' (else the newest if none was kept) or 'latest'.

    `example_batch`: a one-example batch with the training batches' shapes (the task's `example_batch`).
    """
    workdir = pathlib.Path(workdir)
    target = jax.eval_shape(lambda: create_train_state(config, method, example_batch))
    target = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=parallel.replicated(mesh)), target
    )
    folders = ["best", "checkpoints"] if config.eval.checkpoint == "best" else ["checkpoints"]
    for folder in folders:
        if not (workdir / folder).is_dir():
            continue
        manager = Checkpoints(workdir / folder, max_to_keep=None)
        step = manager.latest_step()
        if step is not None:
            try:
                state: TrainState = manager.restore(step, target)
            except Exception as err:  # orbax / TensorStore raise many kinds for a damaged checkpoint
                hint = " (--config.eval.checkpoint=latest reads checkpoints/)" if folder == "best" else ""
                where = workdir / folder / str(step)
                raise CheckpointError(f"{where}: unreadable ({reason(err)}){hint}") from None
            finally:
                manager.close()
            return state.ema_params, step
        manager.close()
    raise FileNotFoundError(f"no checkpoint in {workdir} (run run_train.py with this --workdir first)")


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in flat}


def init_from(state: TrainState, source: str | pathlib.Path, mesh) -> TrainState:
    """`state` with the parameters of another run's best checkpoint (its EMA weights; the newest if it kept
    no best), for fine-tuning: the optimiser, step and everything else stay fresh.

    A run of a different network stops with one line naming the first parameter that differs.
    """
    source = pathlib.Path(source).expanduser()
    for folder in ("best", "checkpoints"):
        if not (source / folder).is_dir():
            continue
        manager = Checkpoints(source / folder, max_to_keep=None)
        step = manager.latest_step()
        if step is None:
            manager.close()
            continue
        raw = manager.restore_as_saved(step)
        manager.close()
        break
    else:
        raise ConfigError(f"train.init_from={source}: no checkpoint there (a run_train.py workdir expected)")
    if not isinstance(raw, dict) or "ema_params" not in raw:
        raise ConfigError(f"train.init_from={source}: {folder}/{step} holds no parameters")
    mine, theirs = _shapes(state.params), _shapes(raw["ema_params"])
    for name in sorted(set(mine) | set(theirs)):
        if mine.get(name) != theirs.get(name):
            what = lambda s: "absent" if s is None else f"shape {s}"  # noqa: E731
            raise ConfigError(
                f"train.init_from={source}: a different network — parameter {name} is "
                f"{what(theirs.get(name))} there, {what(mine.get(name))} here"
            )
    params = jax.tree.map(
        lambda leaf, like: np.asarray(leaf, like.dtype), raw["ema_params"], jax.device_get(state.params)
    )
    params = jax.device_put(params, parallel.replicated(mesh))
    # A copy, not the same buffers: the train step donates params and EMA params separately.
    return state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))
