"""M2DN's network: per-sequence encoders with channel attention, then a conditioned U-Net.

As the paper describes, each sequence gets its own encoder, a 3x3 stride-2 conv + GroupNorm + ReLU (its
contrast is its own; the encoders share no weights), and the concatenated maps pass a squeeze-and-excitation
channel attention (Hu et al. 2018) that weighs the sequences' channels before a U-Net fuses them at half
resolution. The binary availability code v (1 = missing) is tiled to the bottleneck's h x w and
concatenated there, as in the paper. It is also projected by a Dense and added to the time embedding, so
every time-conditioned ResBlock knows which channels are noise to be replaced and which are the condition.
The decoded map is upsampled to the input's size, where the input itself joins the last conv (the paper
does not say how its output returns to full resolution; this keeps the available sequences' full-resolution
detail within reach). Output: x0 of all four sequences.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffseg_jax.models.layers import TimeEmbedding, Upsample, groups_for
from diffseg_jax.models.unet import Bottleneck, Decoder, UNetShape, check_divisible, level_features


class ModalityEncoder(nn.Module):
    """One sequence -> features at half resolution: 3x3 stride-2 conv, GroupNorm, ReLU (the paper's)."""

    features: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        h = nn.Conv(self.features, (3, 3), strides=(2, 2))(x)
        return nn.relu(nn.GroupNorm(groups_for(self.features))(h))


class SqueezeExcitation(nn.Module):
    """x * sigmoid(W2 relu(W1 mean_HW(x))): one weight per channel from the whole map (Hu et al. 2018)."""

    reduction: int = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        channels = x.shape[-1]
        squeezed = jnp.mean(x, axis=(1, 2))
        hidden = nn.relu(nn.Dense(max(channels // self.reduction, 1), name="squeeze")(squeezed))
        gate = nn.sigmoid(nn.Dense(channels, name="excite")(hidden))
        return x * gate[:, None, None, :]


class M2DNNet(UNetShape):
    """(m_t [B,H,W,M], t [B], missing [B,M] float, 1 = missing) -> x0 estimate [B,H,W,out_channels]."""

    stem_features: int = 0  # per-sequence encoder width; 0 -> base_features // 2

    @nn.compact
    def __call__(
        self, m_t: jnp.ndarray, t: jnp.ndarray, missing: jnp.ndarray, train: bool = False
    ) -> jnp.ndarray:
        check_divisible(m_t.shape[1], len(self.multipliers) + 1)  # + the encoders' stride 2
        feats = level_features(self.base_features, self.multipliers)
        code = missing.astype(jnp.float32)
        temb = TimeEmbedding(self.base_features)(t)
        temb = temb + nn.Dense(temb.shape[-1], name="code_embedding")(code)

        width = self.stem_features or max(self.base_features // 2, 1)
        encoded = [
            ModalityEncoder(width, name=f"encoder_{k}")(m_t[..., k : k + 1]) for k in range(m_t.shape[-1])
        ]
        attended = SqueezeExcitation(name="channel_attention")(jnp.concatenate(encoded, axis=-1))
        h = nn.Conv(feats[0], (1, 1), name="fuse")(attended)

        h, skips = self.encode(h, feats, temb, train)
        b, hh, ww, _ = h.shape
        tiled = jnp.broadcast_to(code[:, None, None, :], (b, hh, ww, code.shape[-1])).astype(h.dtype)
        h = Bottleneck(feats[-1], self.dropout, self.remat)(jnp.concatenate([h, tiled], axis=-1), temb, train)
        attn = tuple(self.attention_levels)
        decoder = Decoder(feats, attn, self.num_res_blocks, feats[0], self.dropout, self.remat)
        h = nn.silu(Upsample(feats[0])(decoder(h, skips, temb, train)))
        return nn.Conv(self.out_channels, (3, 3), name="head")(jnp.concatenate([h, m_t.astype(h.dtype)], -1))
