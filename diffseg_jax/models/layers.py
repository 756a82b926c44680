"""Building blocks shared by the networks: time embedding, GroupNorm ResBlock, attention, resampling."""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp


def timestep_embedding(t: jnp.ndarray, dim: int, max_period: float = 10000.0) -> jnp.ndarray:
    """Sinusoidal embedding of integer steps, [B] -> [B, dim] (Transformer / DDPM style)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimeEmbedding(nn.Module):
    """Sinusoid -> MLP, the vector every time-conditioned ResBlock receives."""

    dim: int

    @nn.compact
    def __call__(self, t: jnp.ndarray) -> jnp.ndarray:
        h = timestep_embedding(t, self.dim)
        h = nn.Dense(self.dim * 4)(h)
        return nn.Dense(self.dim * 4)(nn.silu(h))


def groups_for(channels: int, max_groups: int = 8) -> int:
    """Largest group count <= max_groups that divides `channels` (GroupNorm needs a divisor)."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice with a residual; adds a projected time embedding when given."""

    features: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, temb: jnp.ndarray | None = None, train: bool = False) -> jnp.ndarray:
        h = nn.silu(nn.GroupNorm(groups_for(x.shape[-1]))(x))
        h = nn.Conv(self.features, (3, 3))(h)
        if temb is not None:
            h = h + nn.Dense(self.features)(nn.silu(temb))[:, None, None, :]
        h = nn.silu(nn.GroupNorm(groups_for(self.features))(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.features, (3, 3), kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1))(x)
        return x + h


def res_block_type(remat: bool) -> type[ResBlock]:
    """ResBlock, or with `remat` its rematerialised form: activations recomputed in the backward pass.

    Trades compute for memory at large images (`model.remat`); parameter names get a `Checkpoint`
    prefix, so checkpoints of the two forms are not interchangeable.
    """
    return nn.remat(ResBlock, static_argnums=(3,)) if remat else ResBlock


class SelfAttention(nn.Module):
    """Multi-head self-attention over the spatial positions, residual, for low resolutions."""

    num_heads: int = 4
    normalize_qk: bool = True  # QK layer norm: bounded attention logits (no late-training spikes)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, h, w, c = x.shape
        y = nn.GroupNorm(groups_for(c))(x).reshape(b, h * w, c)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, normalize_qk=self.normalize_qk, out_kernel_init=nn.initializers.zeros
        )(y)
        return x + y.reshape(b, h, w, c)


class Downsample(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return nn.Conv(self.features, (3, 3), strides=(2, 2))(x)


class Upsample(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, h, w, c = x.shape
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return nn.Conv(self.features, (3, 3))(x)


def feature_layer_norm() -> nn.LayerNorm:
    """Layer norm over a whole feature map (H, W, C) with a per-channel affine (BTSegDiff, MedSegDiff)."""
    return nn.LayerNorm(reduction_axes=(-3, -2, -1), feature_axes=-1)
