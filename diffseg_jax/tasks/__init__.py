"""The task registry: `config.task` -> the module that implements it (`tasks/base.py` says what that is)."""

from __future__ import annotations

import importlib

import ml_collections

from diffseg_jax.config_defaults import ConfigError
from diffseg_jax.tasks.base import Task

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
