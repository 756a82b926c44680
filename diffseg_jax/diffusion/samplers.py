"""DDPM and DDIM samplers as one `lax.scan`, with an accumulator carried across steps.

The network is a `denoise_fn(x_t, t) -> output` closure (t a scalar step) so the sampler knows nothing of
conditioning; with `self_condition` it is `denoise_fn(x_t, t, x0_prev)`, x0_prev the estimate of the step
before (zeros at the first: self-conditioning, Chen et al. 2022). Per-step x0 estimates are handed to
`accumulate(acc, x0_hat, position)`, position = 1..K counting the visited steps from the noisiest (1) to
the last estimate (K); its state lives in the scan carry: memory stays constant in the number of steps.
The stacked trajectory is only returned on request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffseg_jax.diffusion import process
from diffseg_jax.diffusion.schedules import Schedule

DenoiseFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
Accumulate = Callable[[Any, jnp.ndarray, jnp.ndarray], Any]


def sampling_timesteps(num_train_steps: int, num_sample_steps: int | None) -> np.ndarray:
    """Descending steps to visit: all T for the full chain, else K evenly spaced ending at 0."""
    if num_sample_steps is None or num_sample_steps >= num_train_steps:
        return np.arange(num_train_steps - 1, -1, -1, dtype=np.int32)
    if num_sample_steps < 1:
        raise ValueError(f"number of sampling steps must be >= 1, got {num_sample_steps}")
    steps = np.linspace(num_train_steps - 1, 0, num_sample_steps).round().astype(np.int32)
    return np.unique(steps)[::-1].copy()


def visited_steps(schedule: Schedule, method: str, num_steps: int | None) -> np.ndarray:
    """The descending steps `sample` visits: every step for 'ddpm', K for 'ddim'."""
    _check_method(method)
    return sampling_timesteps(schedule.num_steps, None if method == "ddpm" else num_steps)


def _x0_and_eps(schedule, parameterization, x_t, t, out, clip):
    x0, eps = process.split_prediction(schedule, parameterization, x_t, t, out)
    if clip is not None:
        # Masks live in [-1, 1]; clipping x0 and re-deriving eps keeps DDIM on the data manifold.
        x0 = jnp.clip(x0, *clip)
        eps = process.eps_from_x0(schedule, x_t, t, x0)
    return x0, eps


def ddpm_step(schedule, x0, x_t, t, key):
    """Ancestral step x_t -> x_{t-1} from the posterior q(x_{t-1} | x_t, x0)."""
    mean, var = process.posterior_mean_variance(schedule, x0, x_t, t)
    noise = jax.random.normal(key, x_t.shape, x_t.dtype)
    return mean + jnp.sqrt(var) * noise


def ddim_step(schedule, x0, eps, t, t_prev, key, eta):
    """DDIM update (Song et al. 2021, eq. 12) from step t to t_prev (t_prev < 0 means the end)."""
    ab = schedule.alphas_cumprod[t]
    ab_prev = jnp.where(t_prev >= 0, schedule.alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0)
    sigma = eta * jnp.sqrt((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
    direction = jnp.sqrt(jnp.maximum(1.0 - ab_prev - sigma**2, 0.0)) * eps
    noise = jax.random.normal(key, x0.shape, x0.dtype)
    return jnp.sqrt(ab_prev) * x0 + direction + sigma * noise


def sample(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    parameterization: str,
    shape: tuple[int, ...],
    key: jax.Array,
    *,
    method: str = "ddim",
    num_steps: int | None = None,
    eta: float = 0.0,
    clip: tuple[float, float] | None = (-1.0, 1.0),
    accumulate: Accumulate | None = None,
    acc_init: Any = None,
    return_trajectory: bool = False,
    self_condition: bool = False,
) -> dict[str, Any]:
    """Runs the reverse chain from pure noise.

    Returns {"x0": final x0 estimate, "acc": accumulator, "trajectory": [K, *shape] x0 estimates or None}.
    `method` is 'ddpm' (ancestral, visits every step; num_steps is ignored) or 'ddim' (K steps, eta).
    """
    steps = visited_steps(schedule, method, num_steps)
    init_key, loop_key = jax.random.split(key)
    x_init = jax.random.normal(init_key, shape, jnp.float32)
    return _run_chain(
        denoise_fn,
        schedule,
        parameterization,
        x_init,
        steps,
        loop_key,
        method,
        eta,
        clip,
        accumulate,
        acc_init,
        return_trajectory,
        self_condition,
    )


def sample_from(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    parameterization: str,
    x_start: jnp.ndarray,
    start_step: int,
    key: jax.Array,
    *,
    method: str = "ddim",
    num_steps: int | None = None,
    eta: float = 0.0,
    clip: tuple[float, float] | None = (-1.0, 1.0),
) -> jnp.ndarray:
    """Runs the reverse chain from a given x_t at `start_step` down to 0 (AnoDDPM's partial diffusion).

    'ddpm' visits every step start..0; 'ddim' K evenly spaced steps from start to 0. Returns the x0 estimate.
    """
    _check_method(method)
    if not 0 <= start_step < schedule.num_steps:
        raise ValueError(f"start_step must be in [0, {schedule.num_steps}), got {start_step}")
    k = None if method == "ddpm" else num_steps
    steps = sampling_timesteps(start_step + 1, k)
    out = _run_chain(denoise_fn, schedule, parameterization, x_start, steps, key, method, eta, clip)
    return out["x0"]


def _check_method(method: str) -> None:
    if method not in ("ddpm", "ddim"):
        raise ValueError(f"unknown sampler {method!r}; expected 'ddpm' or 'ddim'")


def _run_chain(
    denoise_fn,
    schedule,
    parameterization,
    x_init,
    steps,
    key,
    method,
    eta,
    clip,
    accumulate=None,
    acc_init=None,
    return_trajectory=False,
    self_condition=False,
) -> dict[str, Any]:
    """The scan over the descending `steps`, starting from x_init at steps[0]."""
    prev = np.concatenate([steps[1:], np.array([-1], np.int32)])
    keys = jax.random.split(key, len(steps))
    shape = x_init.shape

    def body(carry, xs):
        x_t, acc, x0_prev = carry
        t, t_prev, position, step_key = xs
        out = denoise_fn(x_t, t, x0_prev) if self_condition else denoise_fn(x_t, t)
        x0, eps = _x0_and_eps(schedule, parameterization, x_t, t, out, clip)
        if method == "ddpm":
            x_next = ddpm_step(schedule, x0, x_t, t, step_key)
        else:
            x_next = ddim_step(schedule, x0, eps, t, t_prev, step_key, eta)
        if accumulate is not None:
            acc = accumulate(acc, x0, position)
        return (x_next, acc, x0), (x0 if return_trajectory else None)

    init = (x_init, acc_init, jnp.zeros(shape, jnp.float32))
    positions = jnp.arange(1, len(steps) + 1, dtype=jnp.int32)
    xs = (jnp.asarray(steps), jnp.asarray(prev), positions, keys)
    (_, acc, x0_last), trajectory = jax.lax.scan(body, init, xs)
    return {"x0": x0_last, "acc": acc, "trajectory": trajectory}
