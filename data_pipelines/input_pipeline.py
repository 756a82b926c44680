"""Slice arrays for training and evaluation: cached preparation, stateless tf.data batches.

Training batches are a pure function of ``(seed, step)``: the example at global position
``k = step * global_batch_size + j`` is picked by a stateless per-epoch permutation and augmented
with ops seeded by ``[seed, k]``. So restarting at ``start_step`` reproduces an uninterrupted run
exactly, without saving iterator state, and each process computes its own disjoint part of the
global batch. TensorFlow is only used on the CPU and imported lazily.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from data_pipelines import augmentation, brats, case_cache, slice_files, slices
from diffseg_jax import tensorflow_import

_TF_CONFIGURED = False


def _tf() -> Any:
    """Import TensorFlow once, hidden from accelerators and kept off most CPU threads.

    JAX owns the accelerators and the cores; tf.data only shuffles and flips small arrays.
    Settings that TF refuses after its runtime has started are skipped silently.
    """
    global _TF_CONFIGURED
    tf = tensorflow_import.tensorflow()

    if not _TF_CONFIGURED:
        _TF_CONFIGURED = True
        for kind in ("GPU", "TPU"):
            try:
                tf.config.set_visible_devices([], kind)
            except (RuntimeError, ValueError):
                pass
        for setter in (
            tf.config.threading.set_inter_op_parallelism_threads,
            tf.config.threading.set_intra_op_parallelism_threads,
        ):
            try:
                setter(1)
            except RuntimeError:
                pass
    return tf


def build_arrays(
    cases: Sequence[brats.CaseFiles],
    *,
    image_size: int,
    target: str,
    slice_range: tuple[int, int] | None,
    healthy_fraction: float,
    seed: int,
    cache_dir: Path | None,
    progress: bool = True,
    on_disk: bool = False,
    workers: int = 0,
) -> dict[str, np.ndarray]:
    """All cases' examples as {"image", "label", "z", "case"} slice arrays; ``case`` indexes into ``cases``.

    With a ``cache_dir`` each case is prepared once into its own folder there (`case_cache`: reused across
    runs and splits, prepared again when its files or these settings change; ``workers`` processes, 0 = one
    per core). ``on_disk``: image and label stay in those files and come back as
    :class:`~data_pipelines.slice_files.CaseRows` readers (memory does not grow with the cases); otherwise
    they are read into arrays. The slices drawn from a case depend on ``seed`` and its id only.
    """
    if target not in slices.TARGET_CHANNELS:
        raise ValueError(f"target must be one of {sorted(slices.TARGET_CHANNELS)}, got {target!r}")
    params = {
        "image_size": int(image_size),
        "target": target,
        "slice_range": None if slice_range is None else [int(v) for v in slice_range],
        "healthy_fraction": float(healthy_fraction),
        "seed": int(seed),
    }
    channels = slices.TARGET_CHANNELS[target]
    if not cases:
        return {
            "image": np.zeros((0, image_size, image_size, len(brats.MODALITIES)), np.float32),
            "label": np.zeros((0, image_size, image_size, channels), np.float32),
            "z": np.zeros((0,), np.int32),
            "case": np.zeros((0,), np.int32),
        }
    if cache_dir is None:
        if on_disk:
            raise ValueError("on_disk slice arrays need a cache_dir")
        bar = tqdm(cases, desc="preparing slices", unit="case", disable=not progress)
        per_case = [case_cache.case_slices(case, params) for case in bar]
        return _joined([{k: p[k] for k in case_cache.ARRAYS} for p in per_case])
    folders = case_cache.prepare(cases, params, Path(cache_dir), workers=workers, progress=progress)
    z = [np.load(folder / "z.npy") for folder in folders]
    if on_disk:
        rows = {k: slice_files.CaseRows([f / f"{k}.npy" for f in folders]) for k in ("image", "label")}
        return {**rows, "z": np.concatenate(z), "case": _case_index([len(v) for v in z])}
    return _joined([{k: np.load(f / f"{k}.npy") for k in case_cache.ARRAYS} for f in folders])


def _case_index(counts: Sequence[int]) -> np.ndarray:
    return np.repeat(np.arange(len(counts), dtype=np.int32), counts)


def _joined(per_case: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    arrays = {k: np.concatenate([p[k] for p in per_case]) for k in case_cache.ARRAYS}
    return {**arrays, "case": _case_index([len(p["z"]) for p in per_case])}


def train_batches(
    arrays: Mapping[str, np.ndarray],
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    augment: bool | augmentation.Augmentation = True,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless {"image", "label"} batches of this process's share of each global batch.

    Global example ``k`` of step ``k // global_batch_size`` is dataset index
    ``index_shuffle(k % N, seed=[seed, k // N])`` (a fresh permutation per epoch); this process
    takes positions ``[p * B/P, (p + 1) * B/P)`` of every global batch. ``augment``: True = flips and
    quarter turns, False = none, or an :class:`~data_pipelines.augmentation.Augmentation`.
    """
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of "
            f"process_count={process_count}"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    if start_step < 0:
        raise ValueError(f"start_step={start_step} must be >= 0")
    n = int(len(arrays["image"]))
    if n == 0 or len(arrays["label"]) != n:
        raise ValueError(f"need equally many (> 0) images and labels, got {n}, {len(arrays['label'])}")

    if isinstance(augment, bool):
        augment = augmentation.Augmentation(flips=augment, quarter_turns=augment)
    tf = _tf()
    local = global_batch_size // process_count
    gather = _gather_from_files(tf, arrays) if _on_disk(arrays) else _gather_in_memory(tf, arrays)
    seed_t = tf.constant(seed, tf.int64)
    n_t = tf.constant(n, tf.int64)

    def example(m: Any) -> dict[str, Any]:
        k = (m // local) * global_batch_size + process_index * local + m % local
        idx = tf.random.experimental.index_shuffle(
            k % n_t, seed=tf.stack([seed_t, k // n_t]), max_index=n_t - 1
        )
        image, label = gather(idx)
        if augment.active:
            image, label = augmentation.apply(tf, image, label, augment, tf.stack([seed_t, k]))
        return {"image": image, "label": label}

    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = min(2, os.cpu_count() or 1)
    ds = tf.data.Dataset.counter(start=start_step * local, dtype=tf.int64)
    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local, drop_remainder=True).with_options(options)
    if prefetch > 0:
        ds = ds.prefetch(prefetch)
    return ds.as_numpy_iterator()


def _on_disk(arrays: Mapping[str, Any]) -> bool:
    return isinstance(arrays["image"], slice_files.RowFile)  # CaseRows too


def _gather_in_memory(tf: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    images, labels = tf.convert_to_tensor(arrays["image"]), tf.convert_to_tensor(arrays["label"])
    return lambda idx: (tf.gather(images, idx), tf.gather(labels, idx))


def _gather_from_files(tf: Any, arrays: Mapping[str, Any]) -> Any:
    """Example `idx` read from the .npy files (the same values `_gather_in_memory` takes from arrays)."""
    images, labels = arrays["image"], arrays["label"]

    def read(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return images.row(int(idx)), labels.row(int(idx))

    def gather(idx: Any) -> tuple[Any, Any]:
        dtypes = (tf.as_dtype(images.dtype), tf.as_dtype(labels.dtype))
        image, label = tf.numpy_function(read, [idx], dtypes, stateful=False)
        image.set_shape(images.shape[1:])
        label.set_shape(labels.shape[1:])
        return image, label

    return gather


def eval_batches(
    arrays: Mapping[str, np.ndarray],
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's contiguous shard in batches, zero-padded, with a 0/1 "mask" key.

    Every process yields the same number of batches (needed for collectives) and each real
    example appears in exactly one process with mask 1, so masked sums count it once.
    All keys of ``arrays`` are passed through (e.g. "z" and "case" for volume reassembly).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be positive")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    n = int(len(next(iter(arrays.values()))))
    per_process = -(-n // process_count)
    n_batches = -(-per_process // batch_size)
    lo = min(process_index * per_process, n)
    hi = min(lo + per_process, n)
    for b in range(n_batches):
        start, stop = lo + b * batch_size, min(lo + (b + 1) * batch_size, hi)
        count = max(stop - start, 0)
        batch = {}
        for key, value in arrays.items():
            out = np.zeros((batch_size, *value.shape[1:]), dtype=value.dtype)
            out[:count] = value[start : start + count]
            batch[key] = out
        batch["mask"] = (np.arange(batch_size) < count).astype(np.float32)
        yield batch
