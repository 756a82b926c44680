"""The two-stage route to segment from a subset: a synthesis model fills in the missing sequences first.

`--config.eval.fill_in_workdir=runs/m2dn` (with `eval.fill_in_config`, default configs/m2dn.py) makes
evaluation pass every batch of slices through that trained M2DN (or synthesis_unet) before the
segmenter sees it: the zeroed sequences come back synthesised, the available ones unchanged. The
segmenter can then be one trained on all four sequences only.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from data_pipelines import sources
from diffseg_jax import config_files, inference
from diffseg_jax.checkpoint import restore_params
from diffseg_jax.methods.registry import build_method

FillIn = Callable[[np.ndarray, jax.Array], np.ndarray]


def load_config(spec: str) -> ml_collections.ConfigDict:
    """'configs/m2dn.py' or 'configs/m2dn.py:smoke' (as --config takes it) -> the ConfigDict."""
    return config_files.load_config(spec, "eval.fill_in_config")


def make_fill_in(config: ml_collections.ConfigDict, mesh) -> FillIn | None:
    """The synthesis step of `eval.fill_in_workdir`, or None when the route is not asked for."""
    workdir = config.eval.get("fill_in_workdir")
    if not workdir:
        return None
    filler = load_config(config.eval.get("fill_in_config") or "configs/m2dn.py")
    if filler.task != "synthesis":
        raise ValueError(f"eval.fill_in_config: {filler.method!r} is not a synthesis method (m2dn, ...)")
    if filler.data.image_size != config.data.image_size:
        raise ValueError(
            f"eval.fill_in_config: image_size {filler.data.image_size} differs from the segmenter's "
            f"{config.data.image_size}"
        )
    method = build_method(filler)
    params, _ = restore_params(filler, pathlib.Path(workdir), method, mesh, sources.example_slices(filler))
    predict_fn = inference.make_predict_fn(method, mesh)

    def fill(images: np.ndarray, key: jax.Array) -> np.ndarray:
        out = inference.predict_slices(
            predict_fn, params, images, key, mesh, **inference.eval_batching(config)
        )
        return out["synthesis"]

    return fill
