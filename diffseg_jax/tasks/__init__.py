"""The task registry: `config.task` -> the module that implements it (`tasks/base.py` says what that is)."""

from __future__ import annotations

import contextlib
import importlib
import pathlib
from typing import Any

import jax
import ml_collections

from diffseg_jax import workdir_lock
from diffseg_jax.config_defaults import ConfigError
from diffseg_jax.tasks.base import Task, output_dir

_TASKS = {
    "segmentation": "diffseg_jax.tasks.segmentation",
    "anomaly": "diffseg_jax.tasks.anomaly",
    "synthesis": "diffseg_jax.tasks.synthesis",
}


def known_tasks() -> tuple[str, ...]:
    return tuple(sorted(_TASKS))


def get_task(config: ml_collections.ConfigDict | str) -> Task:
    """The task a config declares (`config.task`), or the task of that name."""
    name = config if isinstance(config, str) else config.task
    if name not in _TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(known_tasks())}")
    return importlib.import_module(_TASKS[name]).TASK


def evaluate(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, progress: bool = True
) -> tuple[dict[str, Any], pathlib.Path]:
    """The config's task evaluated, holding its output folder (one evaluation per folder: two writing the same
    case records and tables would interleave them); returns (summary, the output folder)."""
    out_dir = output_dir(config, workdir)
    lock = workdir_lock.hold(out_dir, "run_eval", "one evaluation per output folder")
    with lock if jax.process_index() == 0 else contextlib.nullcontext():
        return get_task(config).evaluate(config, workdir, progress), out_dir
