"""Two-encoder conditional denoiser: EC on the sequences, EU on the noisy mask, fused at every level.

BTSegDiff and MedSegDiff-V1 share this shape and differ in the per-level fusion (`models/fusion.py`):
the fused feature continues down EU and is the decoder's skip (decoder with attention and skips). EC
does not depend on the step or the noisy mask, so its features are computed once per image
(`encode_condition`) and reused at every sampling step and sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffseg_jax.models.fusion import FUSIONS
from diffseg_jax.models.layers import Downsample, TimeEmbedding
from diffseg_jax.models.unet import (
    Bottleneck,
    Decoder,
    UNetShape,
    check_divisible,
    level_features,
)


class DualEncoderNet(UNetShape):
    """`fusion`: 'btsegdiff' (option `fourier`) or 'medsegdiff_v1' (option `fourier` = FF-Parser)."""

    fusion: str = "btsegdiff"
    fourier: bool = True

    def setup(self):
        feats = level_features(self.base_features, self.multipliers)
        attn = tuple(self.attention_levels)
        last = len(feats) - 1
        self.time_embed = TimeEmbedding(feats[0])
        self.cond_in = nn.Conv(feats[0], (3, 3))
        self.noisy_in = nn.Conv(feats[0], (3, 3))
        self.cond_levels = self.encoder_levels(feats)
        self.noisy_levels = self.encoder_levels(feats)
        self.cond_down = [Downsample(feats[i + 1]) for i in range(last)]
        self.noisy_down = [Downsample(feats[i + 1]) for i in range(last)]
        if self.fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {self.fusion!r}; expected one of {sorted(FUSIONS)}")
        self.fusions = [FUSIONS[self.fusion](self.fourier) for _ in feats]
        self.bottleneck = Bottleneck(feats[-1], self.dropout, self.remat)
        self.decoder = Decoder(feats, attn, self.num_res_blocks, self.out_channels, self.dropout, self.remat)

    def encode_condition(self, image: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, ...]:
        """EC: per-level features m_I of the sequences."""
        check_divisible(image.shape[1], len(self.multipliers))
        h = self.cond_in(image)
        features = []
        for level, block in enumerate(self.cond_levels):
            h = block(h, None, train)
            features.append(h)
            if level < len(self.cond_down):
                h = self.cond_down[level](h)
        return tuple(features)

    def denoise(
        self,
        x_t: jnp.ndarray,
        t: jnp.ndarray,
        cond: Sequence[jnp.ndarray],
        train: bool = False,
    ) -> jnp.ndarray:
        """EU + fusion + decoder: the network output for the noisy mask x_t at steps t."""
        temb = self.time_embed(t)
        h = self.noisy_in(x_t)
        skips = []
        for level, block in enumerate(self.noisy_levels):
            m_xt = block(h, temb, train)
            h = self.fusions[level](m_xt, cond[level])
            skips.append(h)
            if level < len(self.noisy_down):
                h = self.noisy_down[level](h)
        h = self.bottleneck(h, temb, train)
        return self.decoder(h, skips, temb, train)

    def __call__(
        self, x_t: jnp.ndarray, t: jnp.ndarray, image: jnp.ndarray, train: bool = False
    ) -> jnp.ndarray:
        return self.denoise(x_t, t, self.encode_condition(image, train), train)
