"""Sequence dropout (diffseg_jax.modalities): which subsets of the four sequences training sees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax import modalities

N_KEYS, BATCH = 200, 32  # 6400 examples per rate


def _subsets(available: np.ndarray) -> list[tuple[str, ...]]:
    """[N, 4] bool -> the names of the available sequences, per example."""
    return [tuple(m for m, a in zip(modalities.MODALITIES, row, strict=True) if a) for row in available]


def _drop(rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 2, 2, 4], what drop_sequences made of them) over N_KEYS keys of BATCH examples."""
    images = np.random.default_rng(0).uniform(1, 2, (BATCH, 2, 2, 4)).astype(np.float32)  # never 0
    keys = jax.random.split(jax.random.PRNGKey(0), N_KEYS)
    out = jax.jit(jax.vmap(lambda k: modalities.drop_sequences(k, jnp.asarray(images), rate)))(keys)
    return np.tile(images, (N_KEYS, 1, 1, 1)), np.asarray(out).reshape(N_KEYS * BATCH, 2, 2, 4)


def test_all_subsets_are_the_fifteen_non_empty_ones():
    subsets = modalities.all_subsets()
    assert len(subsets) == len(set(subsets)) == 15
    assert all(subsets) and set(modalities.MODALITIES) in [set(s) for s in subsets]


@pytest.mark.parametrize("rate", [0.3, 1.0])
def test_drop_sequences_keeps_a_non_empty_proper_subset_at_the_requested_rate(rate):
    images, out = _drop(rate)
    n = len(out)
    # A channel is kept whole or zeroed whole: never half, never rescaled.
    kept = np.all(out == images, axis=(1, 2))
    zeroed = np.all(out == 0, axis=(1, 2))
    assert np.all(kept ^ zeroed)
    assert kept.any(axis=1).all(), "an example lost every sequence"
    dropped = ~kept.all(axis=1)
    # Binomial: 5 standard deviations (0.029 at rate 0.3) around the rate.
    assert abs(dropped.mean() - rate) <= 5 * np.sqrt(rate * (1 - rate) / n) + 1e-9, dropped.mean()
    counts: dict[tuple[str, ...], int] = {}
    for subset in _subsets(kept[dropped]):
        counts[subset] = counts.get(subset, 0) + 1
    proper = [s for s in modalities.all_subsets() if len(s) < 4]
    assert sorted(counts) == sorted(proper), "every non-empty proper subset, and only those"
    expected = dropped.sum() / len(proper)  # uniform over the 14: 5 standard deviations of a count
    for subset, count in counts.items():
        assert abs(count - expected) < 5 * np.sqrt(expected), (subset, count, expected)
    if rate < 1:  # with the examples that keep all four: every non-empty subset occurs
        assert set(_subsets(kept)) == set(modalities.all_subsets())


def test_rate_zero_leaves_images_as_they_are():
    images, out = _drop(0.0)
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize("proper", [True, False])
def test_random_availability_draws_every_allowed_subset(proper):
    available = np.asarray(modalities.random_availability(jax.random.PRNGKey(1), 3000, proper=proper))
    assert available.shape == (3000, 4) and available.dtype == bool
    drawn = set(_subsets(available))
    allowed = {s for s in modalities.all_subsets() if len(s) < 4 or not proper}
    assert drawn == allowed
