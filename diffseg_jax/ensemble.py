"""Fusing S sampled segmentations into one: the mean, or STAPLE.

MedSegDiff fuses its ensemble of chains with STAPLE (Warfield et al., IEEE TMI 2004): each chain is a rater
with an unknown sensitivity p_j and specificity q_j; expectation-maximisation alternates the posterior W of
the true label per voxel with the raters' p_j, q_j. A chain that disagrees with the consensus counts less,
where the mean counts every chain alike. Computed per image and channel, on the chains' binary decisions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_EPS = 1e-6


def mean(probs: jnp.ndarray) -> jnp.ndarray:
    """[S, B, H, W, C] -> [B, H, W, C]: every chain alike."""
    return jnp.mean(probs, axis=0)


def staple(
    probs: jnp.ndarray, *, threshold: float = 0.5, iterations: int = 20, init: float = 0.9
) -> jnp.ndarray:
    """[S, B, H, W, C] chain probabilities -> [B, H, W, C] STAPLE posterior probability of the label.

    Decisions D = probs > threshold; the prior of the label is the mean decision of the image and channel;
    p_j, q_j start at `init` and `iterations` EM steps follow (a fixed count keeps it one compiled loop).
    """
    decisions = (probs > threshold).astype(jnp.float32)
    voxel_axes = (2, 3)  # H, W: the statistics are per chain, image and channel
    prior = jnp.clip(jnp.mean(decisions, axis=(0, 2, 3), keepdims=True)[0], _EPS, 1.0 - _EPS)
    log_prior, log_not_prior = jnp.log(prior), jnp.log1p(-prior)

    def posterior(p, q):
        # log P(D | label) and log P(D | no label), summed over the chains.
        log_p, log_not_p = jnp.log(p), jnp.log1p(-p)
        log_q, log_not_q = jnp.log(q), jnp.log1p(-q)
        on = log_prior + jnp.sum(decisions * log_p + (1 - decisions) * log_not_p, axis=0)
        off = log_not_prior + jnp.sum((1 - decisions) * log_q + decisions * log_not_q, axis=0)
        return jax.nn.sigmoid(on - off)

    def em_step(_, pq):
        p, q = pq
        w = posterior(p, q)[None]
        p = jnp.sum(w * decisions, voxel_axes, keepdims=True) / (jnp.sum(w, voxel_axes, keepdims=True) + _EPS)
        q = jnp.sum((1 - w) * (1 - decisions), voxel_axes, keepdims=True) / (
            jnp.sum(1 - w, voxel_axes, keepdims=True) + _EPS
        )
        return jnp.clip(p, _EPS, 1 - _EPS), jnp.clip(q, _EPS, 1 - _EPS)

    stats_shape = decisions.shape[:2] + (1, 1) + decisions.shape[4:]
    start = (jnp.full(stats_shape, init), jnp.full(stats_shape, init))
    p, q = jax.lax.fori_loop(0, iterations, em_step, start)
    return posterior(p, q)


FUSIONS = {"mean": mean, "staple": staple}
