"""The forward process and the conversions between the network's parameterisations."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffseg_jax.diffusion.schedules import Schedule


def _bcast(values: jnp.ndarray, t: jnp.ndarray, ndim: int) -> jnp.ndarray:
    """Gathers per-example values at steps t and reshapes them to broadcast over an image."""
    return values[t].reshape(t.shape + (1,) * (ndim - t.ndim))


def q_sample(schedule: Schedule, x0: jnp.ndarray, t: jnp.ndarray, noise: jnp.ndarray) -> jnp.ndarray:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps."""
    a = _bcast(schedule.sqrt_alphas_cumprod, t, x0.ndim)
    s = _bcast(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim)
    return a * x0 + s * noise


def eps_from_x0(schedule: Schedule, x_t: jnp.ndarray, t: jnp.ndarray, x0: jnp.ndarray) -> jnp.ndarray:
    a = _bcast(schedule.sqrt_alphas_cumprod, t, x_t.ndim)
    s = _bcast(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.ndim)
    return (x_t - a * x0) / s


def x0_from_eps(schedule: Schedule, x_t: jnp.ndarray, t: jnp.ndarray, eps: jnp.ndarray) -> jnp.ndarray:
    a = _bcast(schedule.sqrt_alphas_cumprod, t, x_t.ndim)
    s = _bcast(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.ndim)
    return (x_t - s * eps) / a


def split_prediction(
    schedule: Schedule, parameterization: str, x_t: jnp.ndarray, t: jnp.ndarray, out: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Returns (x0_hat, eps_hat) from a network output in the given parameterisation."""
    if parameterization == "eps":
        return x0_from_eps(schedule, x_t, t, out), out
    if parameterization == "x0":
        return out, eps_from_x0(schedule, x_t, t, out)
    raise ValueError(f"unknown parameterization {parameterization!r}; expected 'eps' or 'x0'")


def posterior_mean_variance(
    schedule: Schedule, x0: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean and variance of q(x_{t-1} | x_t, x0) (DDPM eq. 7); variance is 0 at t = 0."""
    ab = schedule.alphas_cumprod
    ab_prev = jnp.concatenate([jnp.ones((1,), ab.dtype), ab[:-1]])
    betas = schedule.betas
    coef_x0 = betas * jnp.sqrt(ab_prev) / (1.0 - ab)
    coef_xt = (1.0 - ab_prev) * jnp.sqrt(1.0 - betas) / (1.0 - ab)
    variance = betas * (1.0 - ab_prev) / (1.0 - ab)
    mean = _bcast(coef_x0, t, x_t.ndim) * x0 + _bcast(coef_xt, t, x_t.ndim) * x_t
    return mean, _bcast(variance, t, x_t.ndim)


def sample_timesteps(key: jax.Array, batch: int, num_steps: int, power: float = 1.0) -> jnp.ndarray:
    """Training steps: uniform (power 1, the papers), or t = floor(T u^(1/power)) for power > 1.

    power > 1 trains more often at high noise, where the mask is hidden and only the image can
    answer: the regime that teaches the image pathway (P(t >= T/2) = 1 - 2^-power).
    """
    if power == 1.0:
        return jax.random.randint(key, (batch,), 0, num_steps)
    if power <= 0:
        raise ValueError(f"timestep power must be > 0, got {power}")
    u = jax.random.uniform(key, (batch,))
    return jnp.minimum((num_steps * u ** (1.0 / power)).astype(jnp.int32), num_steps - 1)


def diffusion_losses(
    schedule: Schedule,
    parameterization: str,
    x_t: jnp.ndarray,
    t: jnp.ndarray,
    out: jnp.ndarray,
    x0: jnp.ndarray,
    noise: jnp.ndarray,
    min_snr_gamma: float = 5.0,
    x0_clip: bool = False,
) -> dict[str, jnp.ndarray]:
    """Per-example noise MSE and x0 MSE for either parameterisation.

    For eps-prediction the noise MSE is the plain ||eps - eps_hat||^2 (DDPM). For x0-prediction the noise
    error equals SNR(t) times the x0 error, which explodes at small t; it is weighted by
    min(1, gamma / SNR(t)) (min-SNR-gamma, Hang et al. 2023) so that neither term dominates.
    With eps-prediction the x0 error is the eps error over sqrt(SNR(t)) (x 156 at t = 999 of the linear
    schedule); `x0_clip` measures it on x0_hat clipped to the data range [-1, 1], as guided diffusion's
    samplers clip it, which bounds the term by 4 per pixel.
    """
    x0_hat, eps_hat = split_prediction(schedule, parameterization, x_t, t, out)
    axes = tuple(range(1, x0.ndim))
    noise_mse = jnp.mean((eps_hat - noise) ** 2, axis=axes)
    if parameterization == "x0":
        noise_mse = noise_mse * jnp.minimum(1.0, min_snr_gamma / schedule.snr[t])
    x0_for_loss = jnp.clip(x0_hat, -1.0, 1.0) if x0_clip else x0_hat
    x0_mse = jnp.mean((x0_for_loss - x0) ** 2, axis=axes)
    return {"noise_mse": noise_mse, "x0_mse": x0_mse, "x0_hat": x0_hat}
