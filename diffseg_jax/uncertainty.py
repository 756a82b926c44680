"""Stepwise uncertainty sampling (BTSegDiff): S Monte Carlo chains fused step by step.

Per prediction step t = 1..T along the chain (T = K for DDIM-K, 1000 for the full DDPM chain; t = T is the
last, least noisy estimate): X_t = mean over the S chains of the x0 estimates as probabilities,
U_t = -X_t log X_t, w_t = exp(sigmoid(t / T)) * (1 - U_t); the result is sum_t w_t X_t / sum_t w_t.
Estimates closer to x0 are more accurate, so they weigh more (the paper's rationale; Diff-UNet's code uses
(i + 1) / K with i counting sampling iterations forward). The sums live in the scan carry, so memory does
not grow with the number of steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffseg_jax.diffusion import samplers
from diffseg_jax.diffusion.schedules import Schedule

_EPS = 1e-6


def mask_to_prob(x0: jnp.ndarray) -> jnp.ndarray:
    """Masks are diffused in [-1, 1]; this maps an estimate back to a probability."""
    return jnp.clip((x0 + 1.0) * 0.5, 0.0, 1.0)


def step_weight(prob: jnp.ndarray, position: jnp.ndarray, num_positions: int):
    """Returns (w_t, U_t) per voxel for the mean probability X_t at prediction step `position` of T."""
    entropy = -prob * jnp.log(jnp.clip(prob, _EPS, 1.0))
    weight = jnp.exp(jax.nn.sigmoid(position / num_positions)) * (1.0 - entropy)
    return weight, entropy


def stepwise_uncertainty_sample(
    denoise_fn: samplers.DenoiseFn,
    schedule: Schedule,
    parameterization: str,
    shape: tuple[int, ...],
    key: jax.Array,
    *,
    num_samples: int = 3,
    method: str = "ddim",
    num_steps: int | None = 10,
    eta: float = 0.0,
    threshold: float = 0.5,
    self_condition: bool = False,
    last: int = 0,
) -> dict[str, jnp.ndarray]:
    """Samples S chains at once (a leading vmap axis) and fuses them with the stepwise weights.

    `denoise_fn(x_t, t)` (with `self_condition`: `(x_t, t, x0_prev)`) takes one chain's batch `shape`; it is
    vmapped over the S chains, so condition features closed over in it are shared. `last` > 0 fuses only the
    last that many estimates of the chain (the public BTSegDiff code fuses the end of its chain; over a long
    chain the weights alone barely favour the late estimates); 0 fuses every one. Returns prob, mask,
    uncertainty (weighted mean of U_t), all of `shape`, and the chains' final estimates as probabilities
    (`chains`, [S, *shape]) for other fusions.
    """
    batched_denoise = jax.vmap(denoise_fn, in_axes=(0, None, 0) if self_condition else (0, None))
    num_positions = len(samplers.visited_steps(schedule, method, num_steps))
    if last < 0:
        raise ValueError(f"sampling.stepwise_last={last}: expected 0 (every estimate) or a positive count")
    first_fused = max(num_positions - last, 0) if last else 0  # positions after this one are fused

    def accumulate(acc, x0, position):
        prob = jnp.mean(mask_to_prob(x0), axis=0)
        weight, entropy = step_weight(prob, position, num_positions)
        weight = jnp.where(position > first_fused, weight, 0.0)
        return {
            "w": acc["w"] + weight,
            "wx": acc["wx"] + weight * prob,
            "wu": acc["wu"] + weight * entropy,
        }

    zeros = jnp.zeros(shape, jnp.float32)
    result = samplers.sample(
        batched_denoise,
        schedule,
        parameterization,
        (num_samples,) + tuple(shape),
        key,
        method=method,
        num_steps=num_steps,
        eta=eta,
        accumulate=accumulate,
        acc_init={"w": zeros, "wx": zeros, "wu": zeros},
        self_condition=self_condition,
    )
    acc = result["acc"]
    prob = acc["wx"] / acc["w"]
    return {
        "prob": prob,
        "mask": prob > threshold,
        "uncertainty": acc["wu"] / acc["w"],
        "chains": mask_to_prob(result["x0"]),
    }
