"""Noise schedules: the betas and their cumulative products, precomputed once as arrays."""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp
import numpy as np


class Schedule(flax.struct.PyTreeNode):
    """Per-step quantities of a discrete diffusion with `num_steps` steps (t = 0 .. T-1)."""

    betas: jnp.ndarray
    alphas_cumprod: jnp.ndarray

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]

    @property
    def sqrt_alphas_cumprod(self) -> jnp.ndarray:
        return jnp.sqrt(self.alphas_cumprod)

    @property
    def sqrt_one_minus_alphas_cumprod(self) -> jnp.ndarray:
        return jnp.sqrt(1.0 - self.alphas_cumprod)

    @property
    def snr(self) -> jnp.ndarray:
        """Signal-to-noise ratio alpha_bar / (1 - alpha_bar), used for loss weighting."""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear schedule, rescaled so that any T keeps the T=1000 endpoints' total noise."""
    scale = 1000.0 / num_steps
    return np.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=np.float64)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2)."""
    t = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    alpha_bar = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return np.clip(betas, 0.0, max_beta)


def make_schedule(kind: str, num_steps: int) -> Schedule:
    """Builds a `Schedule` by name ('linear' or 'cosine')."""
    if kind == "linear":
        betas = linear_betas(num_steps)
    elif kind == "cosine":
        betas = cosine_betas(num_steps)
    else:
        raise ValueError(f"unknown noise schedule {kind!r}; expected 'linear' or 'cosine'")
    alphas_cumprod = np.cumprod(1.0 - betas)
    return Schedule(
        betas=jnp.asarray(betas, jnp.float32),
        alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32),
    )
