"""M2DN's network: per-sequence encoders, then a time- and availability-conditioned fusion U-Net.

Each sequence gets its own small conv stem (its contrast is its own; the stems do not share weights), the
four feature maps are concatenated and fused by a U-Net (the shared pieces of `models/unet.py`). The binary
availability code v (1 = missing) is tiled to the bottleneck's h x w and concatenated there, as in the
paper. It is also projected by a Dense and added to the time embedding, so every time-conditioned ResBlock,
at every resolution, knows which channels are noise to be replaced and which are the condition (the
bottleneck alone only informs the decoder through one coarse map). Output: x0 of all four sequences.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffseg_jax.models.layers import Downsample, TimeEmbedding
from diffseg_jax.models.unet import Bottleneck, Decoder, UNetShape, check_divisible, level_features


class SequenceStem(nn.Module):
    """Two 3x3 convs on one sequence: features of its own contrast before fusion."""

    features: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        h = nn.silu(nn.Conv(self.features, (3, 3))(x))
        return nn.Conv(self.features, (3, 3))(h)


class M2DNNet(UNetShape):
    """(m_t [B,H,W,M], t [B], missing [B,M] float, 1 = missing) -> x0 estimate [B,H,W,out_channels]."""

    stem_features: int = 0  # per-sequence stem width; 0 -> base_features // 2

    @nn.compact
    def __call__(
        self, m_t: jnp.ndarray, t: jnp.ndarray, missing: jnp.ndarray, train: bool = False
    ) -> jnp.ndarray:
        check_divisible(m_t.shape[1], len(self.multipliers))
        feats = level_features(self.base_features, self.multipliers)
        code = missing.astype(jnp.float32)
        temb = TimeEmbedding(self.base_features)(t)
        temb = temb + nn.Dense(temb.shape[-1], name="code_embedding")(code)

        width = self.stem_features or max(self.base_features // 2, 1)
        stems = [SequenceStem(width, name=f"stem_{k}")(m_t[..., k : k + 1]) for k in range(m_t.shape[-1])]
        h = nn.Conv(feats[0], (1, 1), name="fuse")(jnp.concatenate(stems, axis=-1))

        skips = []
        for level, encoder_level in enumerate(self.encoder_levels(feats)):
            h = encoder_level(h, temb, train)
            skips.append(h)
            if level < len(feats) - 1:
                h = Downsample(feats[level + 1])(h)
        b, hh, ww, _ = h.shape
        tiled = jnp.broadcast_to(code[:, None, None, :], (b, hh, ww, code.shape[-1])).astype(h.dtype)
        h = Bottleneck(feats[-1], self.dropout, self.remat)(jnp.concatenate([h, tiled], axis=-1), temb, train)
        attn = tuple(self.attention_levels)
        decoder = Decoder(feats, attn, self.num_res_blocks, self.out_channels, self.dropout, self.remat)
        return decoder(h, skips, temb, train)
