"""Batched, sharded prediction over many 2D slices (shared by validation and evaluation)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from diffseg_jax import parallel
from diffseg_jax.methods.base import Method

PredictFn = Callable[[object, jax.Array, jax.Array], dict[str, jax.Array]]


def make_predict_fn(method: Method, mesh: Mesh) -> PredictFn:
    """jit of method.predict with the slice batch sharded over the mesh and params replicated."""
    return jax.jit(
        method.predict,
        in_shardings=(
            parallel.replicated(mesh),
            parallel.data_sharded(mesh),
            parallel.replicated(mesh),
        ),
        out_shardings=parallel.data_sharded(mesh),
    )


def predict_slices(
    predict_fn: PredictFn,
    params,
    images: np.ndarray,
    key: jax.Array,
    mesh: Mesh,
    batch_size: int,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Predicts [N, H, W, M] slices in fixed-size batches (the last one zero-padded, then dropped).

    Fixed batch shapes mean one compilation; each batch gets its own key folded from `key`.
    """
    parallel.check_batch_divisible(batch_size, mesh)
    n = images.shape[0]
    outputs: dict[str, list[np.ndarray]] = {}
    starts = range(0, n, batch_size)
    for i, start in enumerate(tqdm(starts, desc="sampling", disable=not progress, leave=False)):
        chunk = images[start : start + batch_size]
        valid = chunk.shape[0]
        if valid < batch_size:
            pad = np.zeros((batch_size - valid,) + chunk.shape[1:], chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        batch = jax.device_put(chunk, parallel.data_sharded(mesh))
        out = predict_fn(params, batch, jax.random.fold_in(key, i))
        for name, value in out.items():
            outputs.setdefault(name, []).append(np.asarray(value)[:valid])
    return {name: np.concatenate(parts) for name, parts in outputs.items()}
