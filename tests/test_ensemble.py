"""Ensemble fusions: STAPLE against a loop-by-loop numpy EM (Warfield et al. 2004), and its behaviour."""

import jax.numpy as jnp
import numpy as np

from diffseg_jax import ensemble


def _numpy_staple(decisions, iterations=20, init=0.9):
    """One image, one channel: decisions [S, N] in {0, 1}; returns the posterior W [N]."""
    s, n = decisions.shape
    prior = decisions.mean()
    p = np.full(s, init)
    q = np.full(s, init)

    def posterior():
        w = np.empty(n)
        for i in range(n):
            a, b = prior, 1 - prior
            for j in range(s):
                a *= p[j] if decisions[j, i] else 1 - p[j]
                b *= 1 - q[j] if decisions[j, i] else q[j]
            w[i] = a / (a + b)
        return w

    for _ in range(iterations):
        w = posterior()
        p = np.clip((w * decisions).sum(1) / w.sum(), 1e-6, 1 - 1e-6)
        q = np.clip(((1 - w) * (1 - decisions)).sum(1) / (1 - w).sum(), 1e-6, 1 - 1e-6)
    return posterior()


def test_staple_matches_a_numpy_em_per_image_and_channel():
    rng = np.random.default_rng(0)
    truth = rng.random((2, 6, 6, 2)) < 0.3
    flips = rng.random((4, 2, 6, 6, 2)) < np.array([0.05, 0.1, 0.2, 0.4])[:, None, None, None, None]
    probs = np.where(truth[None] ^ flips, 0.8, 0.2).astype(np.float32)
    fused = np.asarray(ensemble.staple(jnp.asarray(probs)))
    for b in range(2):
        for c in range(2):
            expected = _numpy_staple((probs[:, b, :, :, c] > 0.5).reshape(4, -1).astype(float))
            np.testing.assert_allclose(fused[b, :, :, c].ravel(), expected, atol=1e-4)


def test_staple_trusts_the_consistent_chains_where_the_mean_splits_the_vote():
    """Three chains agree on a square, a fourth marks another square: the mean gives it 1/4, STAPLE ~0."""
    agree = np.zeros((1, 16, 16, 1), np.float32)
    agree[0, 4:10, 4:10] = 1.0
    outlier = np.zeros_like(agree)
    outlier[0, 10:14, 10:14] = 1.0
    probs = jnp.asarray(np.stack([agree, agree, agree, outlier]))
    fused = np.asarray(ensemble.staple(probs))
    mean = np.asarray(ensemble.mean(probs))
    assert np.all(fused[agree > 0.5] > 0.99)
    assert np.all(fused[outlier > 0.5] < mean[outlier > 0.5])
    np.testing.assert_allclose(mean[outlier > 0.5], 0.25)
