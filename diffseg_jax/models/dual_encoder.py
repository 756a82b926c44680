"""Two-encoder conditional denoiser: EC on the sequences, EU on the noisy mask, fused level by level.

BTSegDiff and MedSegDiff-V1 share this shape and differ in the per-level fusion (`models/fusion.py`):
the fused feature continues down EU and is the decoder's skip (decoder with attention and skips).
`fusion_levels` names the levels that fuse (None: every level; MedSegDiff-V1's paper: the middle two);
elsewhere EU's own features go on, and EC stops at the deepest fused level. EC does not depend on the
step or the noisy mask, so its features are computed once per image (`encode_condition`) and reused at
every sampling step and sample. With `condition_head` an image-only head on EC's features is recorded
(`sow`) for an auxiliary loss (`models/condition_head.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffseg_jax.models.condition_head import ConditionHead
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
    fusion_levels: tuple[int, ...] | None = None
    condition_head: bool = False
    condition_head_levels: int = 0  # 0: every fused level; k: the k coarsest (`ConditionHead`)

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
        self.fused = fused_levels(self.fusion_levels, len(feats))
        self.fusions = [FUSIONS[self.fusion](self.fourier) for _ in self.fused]
        self.bottleneck = Bottleneck(feats[-1], self.dropout, self.remat)
        self.decoder = Decoder(feats, attn, self.num_res_blocks, self.out_channels, self.dropout, self.remat)
        if self.condition_head:
            self.image_head = ConditionHead(self.out_channels, self.condition_head_levels)

    def encode_condition(self, image: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, ...]:
        """EC: per-level features m_I of the sequences."""
        check_divisible(image.shape[1], len(self.multipliers))
        h = self.cond_in(image)
        features = []
        for level in range(max(self.fused) + 1):
            h = self.cond_levels[level](h, None, train)
            features.append(h)
            if level < max(self.fused):
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
            h = block(h, temb, train)
            if level in self.fused:
                h = self.fusions[self.fused.index(level)](h, cond[level])
            skips.append(h)
            if level < len(self.noisy_down):
                h = self.noisy_down[level](h)
        h = self.bottleneck(h, temb, train)
        return self.decoder(h, skips, temb, train)

    def __call__(
        self, x_t: jnp.ndarray, t: jnp.ndarray, image: jnp.ndarray, train: bool = False
    ) -> jnp.ndarray:
        cond = self.encode_condition(image, train)
        if self.condition_head:
            self.sow("intermediates", "condition_logits", self.image_head(cond))
        return self.denoise(x_t, t, cond, train)


def fused_levels(levels: Sequence[int] | None, num_levels: int) -> tuple[int, ...]:
    """The sorted levels that fuse; None means every level. Out-of-range or no levels is an error."""
    chosen = tuple(range(num_levels)) if levels is None else tuple(sorted(set(int(i) for i in levels)))
    if not chosen or chosen[0] < 0 or chosen[-1] >= num_levels:
        raise ValueError(f"fusion levels {levels!r} must be a non-empty subset of 0..{num_levels - 1}")
    return chosen


def middle_levels(num_levels: int) -> tuple[int, ...]:
    """The middle two of the encoder's levels (MedSegDiff-V1 fuses there): 1, 2 of 4; 2, 3 of 6."""
    if num_levels < 2:
        return tuple(range(num_levels))
    return (num_levels // 2 - 1, num_levels // 2)
