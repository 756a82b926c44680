"""An image-only segmentation head on the condition encoder's features (deep supervision, FCN-style).

A dual-encoder denoiser learns its image pathway only from the training steps at which the noisy mask
hides the answer. A 1x1 head per fused level, resized to full size and summed (FCN, Long et al. 2015),
supervised by the mask at every step, hands that pathway a direct gradient on every example, as
MedSegDiff-V2 supervises its condition model. Training only: sampling never calls it.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConditionHead(nn.Module):
    """`coarsest_levels`: 0 = a 1x1 head on every given level; k > 0 = on the k coarsest only."""

    out_channels: int
    coarsest_levels: int = 0

    @nn.compact
    def __call__(self, features: Sequence[jnp.ndarray]) -> jnp.ndarray:
        """Logits [B, H, W, out] at the finest level's size from the per-level features."""
        batch, height, width = features[0].shape[:3]
        logits = jnp.zeros((batch, height, width, self.out_channels), jnp.float32)
        used = features[-self.coarsest_levels :] if self.coarsest_levels else features
        for level_features in used:
            coarse = nn.Conv(self.out_channels, (1, 1))(level_features).astype(jnp.float32)
            logits = logits + jax.image.resize(coarse, logits.shape, "bilinear")
        return logits
