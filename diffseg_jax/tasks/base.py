"""What a task provides to the shared training loop and to run_eval.

A task (segmentation, anomaly detection, synthesis of missing sequences) owns everything that differs
between them: which slices train and validate, which validation scores are logged and which one picks the
best checkpoint, what its methods' `predict` returns, how a trained model is evaluated and what is written,
and the lines run_eval prints. The training loop, checkpoints and the CLIs stay task-agnostic.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any, Literal

import ml_collections
import numpy as np

Arrays = dict[str, np.ndarray]
# images [N, H, W, M] -> the method's predict outputs as numpy (batched, sharded, EMA params)
Predict = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """Arrays the training loop consumes: `train` ("image", "label") batches and `val` for the scores."""

    train: Arrays
    val: Arrays
    description: str  # one log line: what was loaded (cases per split, slices)


@dataclasses.dataclass(frozen=True)
class Task:
    """One task's data, scores, evaluation and summary.

    predict_outputs: keys (and what they hold) every method of this task returns from `predict`.
    selection: the validation score that picks the best checkpoint, and whether higher or lower is better.
    example_batch: a one-example batch of zeros with the training batches' shapes (initialising a model,
    building a checkpoint's restore target).
    """

    name: str
    predict_outputs: dict[str, str]
    selection: str
    selection_mode: Literal["max", "min"]
    example_batch: Callable[[ml_collections.ConfigDict], Arrays]
    prepare_training: Callable[[ml_collections.ConfigDict, bool], TrainingData]
    validation_scores: Callable[[Predict, Arrays, ml_collections.ConfigDict], dict[str, float]]
    evaluate: Callable[[ml_collections.ConfigDict, pathlib.Path, bool], dict[str, Any]]
    summary_lines: Callable[[ml_collections.ConfigDict, dict[str, Any]], list[str]]

    @property
    def selection_label(self) -> str:
        """The selection score as a flat name ('val/dice' -> 'val_dice') for checkpoints and progress bars."""
        return self.selection.replace("/", "_")


def output_dir(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> pathlib.Path:
    """Where an evaluation writes: `eval.output_dir`, else <workdir>/eval."""
    return pathlib.Path(config.eval.output_dir) if config.eval.output_dir else pathlib.Path(workdir) / "eval"
