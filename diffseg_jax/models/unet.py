"""U-Net pieces (encoder levels, bottleneck, decoder) and the deterministic baseline U-Net.

Levels run from full resolution (0) to the coarsest (L-1); every level but the last is followed by a
stride-2 downsample, so the image side must be divisible by 2**(L-1).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffseg_jax.models.layers import Downsample, SelfAttention, Upsample, groups_for, res_block_type


class EncoderLevel(nn.Module):
    """ResBlocks (time-conditioned when temb is given), optional attention, at one resolution."""

    features: int
    num_res_blocks: int
    attention: bool
    dropout: float = 0.0
    remat: bool = False

    @nn.compact
    def __call__(self, h: jnp.ndarray, temb: jnp.ndarray | None, train: bool) -> jnp.ndarray:
        for _ in range(self.num_res_blocks):
            h = res_block_type(self.remat)(self.features, self.dropout)(h, temb, train)
            if self.attention:
                h = SelfAttention()(h)
        return h


class Bottleneck(nn.Module):
    features: int
    dropout: float = 0.0
    remat: bool = False

    @nn.compact
    def __call__(self, h: jnp.ndarray, temb: jnp.ndarray | None, train: bool) -> jnp.ndarray:
        h = res_block_type(self.remat)(self.features, self.dropout)(h, temb, train)
        h = SelfAttention()(h)
        return res_block_type(self.remat)(self.features, self.dropout)(h, temb, train)


class Decoder(nn.Module):
    """Coarse-to-fine: concatenate each level's skip, ResBlocks (+attention), upsample; then project."""

    level_features: Sequence[int]
    attention_levels: Sequence[int]
    num_res_blocks: int
    out_channels: int
    dropout: float = 0.0
    remat: bool = False

    @nn.compact
    def __call__(
        self,
        h: jnp.ndarray,
        skips: Sequence[jnp.ndarray],
        temb: jnp.ndarray | None,
        train: bool,
        return_features: bool = False,
    ) -> jnp.ndarray | tuple[jnp.ndarray, jnp.ndarray]:
        """The output map; with `return_features` also the last decoded feature map (before the head)."""
        for level in reversed(range(len(self.level_features))):
            features = self.level_features[level]
            h = jnp.concatenate([h, skips[level]], axis=-1)
            for _ in range(self.num_res_blocks):
                h = res_block_type(self.remat)(features, self.dropout)(h, temb, train)
                if level in self.attention_levels:
                    h = SelfAttention()(h)
            if level > 0:
                h = Upsample(self.level_features[level - 1])(h)
        h = nn.silu(nn.GroupNorm(groups_for(h.shape[-1]))(h))
        out = nn.Conv(self.out_channels, (3, 3))(h)
        return (out, h) if return_features else out


def level_features(base: int, multipliers: Sequence[int]) -> tuple[int, ...]:
    return tuple(base * m for m in multipliers)


def check_divisible(side: int, num_levels: int) -> None:
    factor = 2 ** (num_levels - 1)
    if side % factor:
        raise ValueError(f"image side {side} is not divisible by the network's total downsampling {factor}")


class UNetShape(nn.Module):
    """The shape fields every U-Net-based network shares (`methods.base.unet_kwargs` fills them)."""

    out_channels: int
    base_features: int = 32
    multipliers: Sequence[int] = (1, 2, 4)
    num_res_blocks: int = 1
    attention_levels: Sequence[int] = (2,)
    dropout: float = 0.0
    remat: bool = False  # rematerialise the ResBlocks (memory for compute, large images)

    def encoder_levels(self, feats: Sequence[int]) -> list[EncoderLevel]:
        """One EncoderLevel per resolution (attention where `attention_levels` says)."""
        return [
            EncoderLevel(f, self.num_res_blocks, i in self.attention_levels, self.dropout, self.remat)
            for i, f in enumerate(feats)
        ]

    def encode(
        self, h: jnp.ndarray, feats: Sequence[int], temb: jnp.ndarray | None, train: bool
    ) -> tuple[jnp.ndarray, list[jnp.ndarray]]:
        """The encoder of a compact U-Net: each level, its output kept as a skip, then a strided downsample
        (none after the deepest). Returns (the deepest features, the skips)."""
        skips = []
        for level, encoder_level in enumerate(self.encoder_levels(feats)):
            h = encoder_level(h, temb, train)
            skips.append(h)
            if level < len(feats) - 1:
                h = Downsample(feats[level + 1])(h)
        return h, skips


class UNet(UNetShape):
    """Plain deterministic U-Net on the sequences: the baseline a diffusion model must beat.

    With `return_features` it returns {"logits", "decoded" (last decoder feature map), "semantic"
    (bottleneck output)}: MedSegDiff-V2's condition model.
    """

    return_features: bool = False

    @nn.compact
    def __call__(self, image: jnp.ndarray, train: bool = False) -> jnp.ndarray | dict[str, jnp.ndarray]:
        check_divisible(image.shape[1], len(self.multipliers))
        feats = level_features(self.base_features, self.multipliers)
        h, skips = self.encode(nn.Conv(feats[0], (3, 3))(image), feats, None, train)
        semantic = Bottleneck(feats[-1], self.dropout, self.remat)(h, None, train)
        attn = tuple(self.attention_levels)
        decoder = Decoder(feats, attn, self.num_res_blocks, self.out_channels, self.dropout, self.remat)
        if not self.return_features:
            return decoder(semantic, skips, None, train)
        logits, decoded = decoder(semantic, skips, None, train, return_features=True)
        return {"logits": logits, "decoded": decoded, "semantic": semantic}
