"""MedSegDiff-V2's anchor condition: (uncertain) spatial attention from the condition model's decoding.

f_anc = max(f_c * k_Gauss, f_c) with a Gaussian kernel whose mean (centre offset) and variance are learned;
f' = sigmoid(conv1x1(f_anc)) * f + f on the denoiser's first encoder features. The smoothing spreads the
condition model's possibly too-tight boundary (its uncertainty); the max keeps its confident peaks.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def gaussian_kernel(size: int, mean: jnp.ndarray, sigma: jnp.ndarray) -> jnp.ndarray:
    """[size, size] Gaussian with centre offset `mean` (2,) in pixels and std `sigma`, summing to 1."""
    r = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2.0
    dy = r[:, None] - mean[0]
    dx = r[None, :] - mean[1]
    k = jnp.exp(-(dy**2 + dx**2) / (2.0 * sigma**2))
    return k / jnp.sum(k)


def depthwise_blur(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """The same [k, k] kernel on every channel of [B, H, W, C], 'same' padding, in x's dtype."""
    c = x.shape[-1]
    rhs = jnp.broadcast_to(kernel[:, :, None, None].astype(x.dtype), kernel.shape + (1, c))
    return jax.lax.conv_general_dilated(
        x, rhs, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c
    )


class SpatialAttentionAnchor(nn.Module):
    """`uncertain=True`: U-SA (learned Gaussian + max); False: plain spatial attention (the ablation's SA)."""

    uncertain: bool = True
    kernel_size: int = 5

    @nn.compact
    def __call__(self, features: jnp.ndarray, anchor: jnp.ndarray) -> jnp.ndarray:
        if self.uncertain:
            mean = self.param("mean", nn.initializers.zeros, (2,))
            log_sigma = self.param("log_sigma", nn.initializers.zeros, ())  # sigma = 1 px at init
            kernel = gaussian_kernel(self.kernel_size, mean, jnp.exp(log_sigma))
            anchor = jnp.maximum(depthwise_blur(anchor, kernel), anchor)
        gate = nn.sigmoid(nn.Conv(1, (1, 1))(anchor))
        return gate * features + features
