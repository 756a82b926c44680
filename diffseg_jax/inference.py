"""Batched, sharded prediction over many 2D slices (shared by validation and evaluation)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import jax
import ml_collections
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


def eval_batching(config: ml_collections.ConfigDict) -> dict[str, int]:
    """`predict_slices`' batching arguments from `config.eval`."""
    return {
        "batch_size": config.eval.batch_size,
        "concurrent": config.eval.get("concurrent_batches", 1),
    }


def predict_slices(
    predict_fn: PredictFn,
    params,
    images: np.ndarray,
    key: jax.Array,
    mesh: Mesh,
    batch_size: int,
    progress: bool = False,
    concurrent: int = 1,
) -> dict[str, np.ndarray]:
    """Predicts [N, H, W, M] slices in fixed-size batches (the last one zero-padded, then dropped).

    Fixed batch shapes mean one compilation; each batch gets its own key folded from `key`, so the result
    does not depend on `concurrent`: how many batches run at once, each from its own host thread. On a CPU
    one sampling program keeps ~1.4 of 2 cores busy (many small ops run one at a time); two at once fill
    the gaps (docs/results.md, "Speed").
    """
    parallel.check_batch_divisible(batch_size, mesh)
    if concurrent < 1:
        raise ValueError(f"eval.concurrent_batches={concurrent} must be at least 1")
    n = images.shape[0]
    sharding = parallel.data_sharded(mesh)

    def run(i: int) -> dict[str, np.ndarray]:
        chunk = images[i * batch_size : (i + 1) * batch_size]
        valid = chunk.shape[0]
        if valid < batch_size:
            pad = np.zeros((batch_size - valid,) + chunk.shape[1:], chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        out = predict_fn(params, jax.device_put(chunk, sharding), jax.random.fold_in(key, i))
        return {name: np.asarray(value)[:valid] for name, value in out.items()}

    batches = range(-(-n // batch_size))
    bar = tqdm(total=len(batches), desc="sampling", disable=not progress, leave=False)
    outputs: dict[str, list[np.ndarray]] = {}
    with ThreadPoolExecutor(concurrent) if concurrent > 1 else nullcontext() as pool:
        for out in pool.map(run, batches) if pool else map(run, batches):
            for name, value in out.items():
                outputs.setdefault(name, []).append(value)
            bar.update()
    bar.close()
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def warm_up(predict_fn: PredictFn, params, example: np.ndarray, mesh: Mesh, batch_size: int) -> float:
    """Compiles (or loads from the compilation cache) the program for `batch_size` slices shaped like
    `example` [1, H, W, M] by sampling one batch of zeros; returns its seconds. Evaluations call it before
    the first case, so a case's seconds are its own work."""
    tic = time.perf_counter()
    zeros = np.zeros((batch_size,) + example.shape[1:], example.dtype)
    out = predict_fn(params, jax.device_put(zeros, parallel.data_sharded(mesh)), jax.random.PRNGKey(0))
    jax.block_until_ready(out)
    return time.perf_counter() - tic
