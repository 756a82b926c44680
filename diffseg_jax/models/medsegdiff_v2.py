"""MedSegDiff-V2's denoiser: a condition U-Net steers a diffusion U-Net through two paths.

- anchor: the condition model's last decoded feature gates the denoiser's first encoder features through
  (uncertain) spatial attention (`models/anchor.py`);
- semantic: the condition model's bottleneck embedding meets the denoiser's bottleneck in the SS-Former
  (`models/ss_former.py`).
The condition model is also a segmenter in its own right: its logits are recorded (`sow`) so the method can
supervise them with Dice + beta * CE. Condition outputs do not depend on the step: computed once per image.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from diffseg_jax.models.anchor import SpatialAttentionAnchor
from diffseg_jax.models.layers import Downsample, TimeEmbedding
from diffseg_jax.models.ss_former import SSFormer
from diffseg_jax.models.unet import (
    Bottleneck,
    Decoder,
    UNet,
    UNetShape,
    check_divisible,
    level_features,
)

ANCHORS = ("uncertain", "plain", "none")


class MedSegDiffV2Net(UNetShape):
    """`anchor`: 'uncertain' (U-SA), 'plain' (SA) or 'none'; `ss_former` and `nbp_filter` switch the rest."""

    anchor: str = "uncertain"
    ss_former: bool = True
    nbp_filter: bool = True
    ss_former_blocks: int = 1

    def setup(self):
        if self.anchor not in ANCHORS:
            raise ValueError(f"unknown anchor {self.anchor!r}; expected one of {ANCHORS}")
        feats = level_features(self.base_features, self.multipliers)
        attn = tuple(self.attention_levels)
        self.condition_model = UNet(
            self.out_channels,
            self.base_features,
            tuple(self.multipliers),
            self.num_res_blocks,
            attn,
            self.dropout,
            self.remat,
            return_features=True,
        )
        self.time_embed = TimeEmbedding(feats[0])
        self.noisy_in = nn.Conv(feats[0], (3, 3))
        self.levels = self.encoder_levels(feats)
        self.downs = [Downsample(feats[i + 1]) for i in range(len(feats) - 1)]
        if self.anchor != "none":
            self.anchor_attention = SpatialAttentionAnchor(uncertain=self.anchor == "uncertain")
        self.bottleneck = Bottleneck(feats[-1], self.dropout, self.remat)
        if self.ss_former:
            self.semantic_former = SSFormer(self.ss_former_blocks, nbp_filter=self.nbp_filter)
        self.decoder = Decoder(feats, attn, self.num_res_blocks, self.out_channels, self.dropout, self.remat)

    def encode_condition(self, image: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
        """The condition model on the sequences: {"logits", "decoded" (anchor), "semantic"}."""
        check_divisible(image.shape[1], len(self.multipliers))
        return self.condition_model(image, train)

    def denoise(
        self, x_t: jnp.ndarray, t: jnp.ndarray, cond: dict[str, jnp.ndarray], train: bool = False
    ) -> jnp.ndarray:
        temb = self.time_embed(t)
        h = self.noisy_in(x_t)
        skips = []
        for level, block in enumerate(self.levels):
            h = block(h, temb, train)
            if level == 0 and self.anchor != "none":
                h = self.anchor_attention(h, cond["decoded"])
            skips.append(h)
            if level < len(self.downs):
                h = self.downs[level](h)
        h = self.bottleneck(h, temb, train)
        if self.ss_former:
            h = self.semantic_former(h, cond["semantic"], temb)
        return self.decoder(h, skips, temb, train)

    def __call__(
        self, x_t: jnp.ndarray, t: jnp.ndarray, image: jnp.ndarray, train: bool = False
    ) -> jnp.ndarray:
        cond = self.encode_condition(image, train)
        self.sow("intermediates", "condition_logits", cond["logits"])
        return self.denoise(x_t, t, cond, train)
