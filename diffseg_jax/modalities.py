"""Which sequences a slice has: the convention every missing-modality method shares.

A missing sequence is an all-zero channel (images are z-scored inside the brain, so a present sequence is
non-zero on every brain pixel); `available` is a [B, 4] boolean in MODALITIES order (t1, t1ce, t2, flair).
Training drops a random non-empty proper subset per example; evaluation enumerates the 15 non-empty subsets.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from diffseg_jax.vocabulary import MODALITIES as MODALITIES  # re-exported
from diffseg_jax.vocabulary import parse_available as parse_available


def all_subsets() -> list[tuple[str, ...]]:
    """The 15 non-empty subsets of the four sequences, smallest first, each exactly once."""
    return [c for r in range(1, len(MODALITIES) + 1) for c in itertools.combinations(MODALITIES, r)]


def availability_vector(names: tuple[str, ...]) -> np.ndarray:
    """[4] float32, 1 = available, in MODALITIES order."""
    return np.array([m in names for m in MODALITIES], np.float32)


def available_from_image(images: jnp.ndarray) -> jnp.ndarray:
    """[B, H, W, 4] -> [B, 4] bool: a channel is available when any of its pixels is non-zero."""
    return jnp.any(images != 0, axis=(1, 2))


def random_availability(key: jax.Array, batch: int, proper: bool = True) -> jnp.ndarray:
    """[B, 4] bool, uniform over the non-empty subsets (also excluding all-present when `proper`)."""
    table = np.array([availability_vector(s) for s in all_subsets()], bool)
    if proper:
        table = table[~table.all(axis=1)]
    return jnp.asarray(table)[jax.random.randint(key, (batch,), 0, len(table))]


def keep_channels(images: jnp.ndarray, available: jnp.ndarray) -> jnp.ndarray:
    """Zeroes the missing channels: [B, H, W, 4] * [B, 4]."""
    return images * available[:, None, None, :].astype(images.dtype)


def drop_sequences(key: jax.Array, images: jnp.ndarray, rate: float) -> jnp.ndarray:
    """With probability `rate` per example, keep only a random non-empty proper subset of the sequences.

    Trains a segmenter for any subset (BTSegDiff with dropout, ShaSpec); `rate` = 0 leaves images as they are.
    """
    pick_key, subset_key = jax.random.split(key)
    drop = jax.random.bernoulli(pick_key, rate, images.shape[:1])[:, None]
    subset = random_availability(subset_key, images.shape[0], proper=True)
    return keep_channels(images, jnp.where(drop, subset, True))
