"""ShaSpec's network (Wang et al., CVPR 2023): shared + specific encoders per sequence, fused into one U-Net.

Every sequence x_m [B,H,W,1] goes through one SHARED encoder (same weights for all four: the modality is
folded into the batch) and its own SPECIFIC encoder (four modules, `specific_encoder_<k>`),
both at `encoder_features` width (default base_features // 2, so the model stays near the U-Net's size).

`fuse_at` = 'bottom' (the paper): shared and specific features meet once, at the deepest level, as
f_m = sh_m + Conv1x1([sh_m; sp_m]) (one projection for all sequences); a missing sequence's f_m IS the mean
of the available sequences' shared features. The four f_m are concatenated in MODALITIES order and
projected (1x1) into the bottleneck; the decoder's skips are the shared features of each level, the missing
ones replaced by the available mean, concatenated and projected the same way.
`fuse_at` = 'every_level': the fusion above at every level, a missing sequence getting the mean shared
feature and a zero specific one inside it (f_m = mean + Conv1x1([mean; 0])).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffseg_jax import modalities
from diffseg_jax.models.layers import Downsample
from diffseg_jax.models.unet import (
    Bottleneck,
    Decoder,
    EncoderLevel,
    UNetShape,
    check_divisible,
    level_features,
)


def impute_shared(shared: jnp.ndarray, available: jnp.ndarray) -> jnp.ndarray:
    """[B,M,...] features, [B,M] bool -> missing entries replaced by the mean over the available ones.

    An example with nothing available (an empty slice) gets zeros rather than a division by zero.
    """
    mask = available.astype(shared.dtype).reshape(available.shape + (1,) * (shared.ndim - 2))
    count = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0)
    mean = jnp.sum(shared * mask, axis=1, keepdims=True) / count
    return jnp.where(mask > 0, shared, mean)


class SequenceEncoder(nn.Module):
    """A one-channel image -> its features at every level (stem conv, EncoderLevels, downsampling)."""

    features: Sequence[int]
    num_res_blocks: int
    attention_levels: Sequence[int]
    dropout: float = 0.0
    remat: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> tuple[jnp.ndarray, ...]:
        h = nn.Conv(self.features[0], (3, 3))(x)
        out = []
        for level, f in enumerate(self.features):
            attention = level in self.attention_levels
            h = EncoderLevel(f, self.num_res_blocks, attention, self.dropout, self.remat)(h, None, train)
            out.append(h)
            if level < len(self.features) - 1:
                h = Downsample(self.features[level + 1])(h)
        return tuple(out)


class ShaSpecUNet(UNetShape):
    """image [B,H,W,M] -> logits [B,H,W,out]; with `return_aux` also the features the ShaSpec losses need.

    aux = {"shared": deepest shared features before imputation [B,M,h,w,c], "fused": the deepest fused
    features [B,M,h,w,c], "modality_logits": the classifier of the deepest specific features [B,M,M],
    "available": [B,M] bool}.
    """

    encoder_features: int = 0  # level-0 width of the shared and the specific encoders; 0 -> base // 2
    fuse_at: str = "bottom"  # 'bottom' (the paper) or 'every_level'

    @nn.compact
    def __call__(
        self,
        image: jnp.ndarray,
        train: bool = False,
        available: jnp.ndarray | None = None,
        return_aux: bool = False,
    ) -> jnp.ndarray | tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
        """`available` [B,M] bool overrides the all-zero-channel rule (tests; never needed in training)."""
        check_divisible(image.shape[1], len(self.multipliers))
        b, num_mod = image.shape[0], image.shape[-1]
        if available is None:
            available = modalities.available_from_image(image)
        feats = level_features(self.base_features, self.multipliers)
        enc_feats = level_features(self.encoder_features or max(self.base_features // 2, 1), self.multipliers)
        enc_args = (enc_feats, self.num_res_blocks, tuple(self.attention_levels), self.dropout, self.remat)

        per_mod = jnp.moveaxis(image, -1, 0)[..., None]  # [M,B,H,W,1]
        folded = per_mod.reshape((num_mod * b,) + per_mod.shape[2:])
        shared = SequenceEncoder(*enc_args, name="shared_encoder")(folded, train)
        shared = [s.reshape((num_mod, b) + s.shape[1:]).swapaxes(0, 1) for s in shared]  # [B,M,h,w,c]
        # One module per sequence, not nn.vmap over stacked weights: a vmapped conv kernel lowers to a
        # grouped convolution that XLA's CPU backend ran 6x slower (a default-preset train step: 2.9 s
        # against 0.49 s with four plain ones).
        per_sequence = [
            SequenceEncoder(*enc_args, name=f"specific_encoder_{k}")(per_mod[k], train)
            for k in range(num_mod)
        ]
        specific = [jnp.stack(levels, axis=1) for levels in zip(*per_sequence, strict=True)]  # [B,M,h,w,c]

        if self.fuse_at not in ("bottom", "every_level"):
            raise ValueError(f"unknown fuse_at {self.fuse_at!r}; expected 'bottom' or 'every_level'")
        keep = available.reshape((b, num_mod, 1, 1, 1))
        bottom = len(feats) - 1
        skips = []
        for level, (sh, sp) in enumerate(zip(shared, specific, strict=True)):
            imputed = impute_shared(sh, available)
            if self.fuse_at == "every_level":
                fused = imputed + nn.Conv(sh.shape[-1], (1, 1), name=f"fuse_{level}")(
                    jnp.concatenate([imputed, jnp.where(keep, sp, 0.0)], -1)
                )
            elif level == bottom:
                composed = sh + nn.Conv(sh.shape[-1], (1, 1), name="fuse")(jnp.concatenate([sh, sp], -1))
                fused = jnp.where(keep, composed, imputed)
            else:
                fused = imputed
            if level == bottom:
                bottom_fused = fused
            stacked = jnp.moveaxis(fused, 1, -2).reshape(fused.shape[:1] + fused.shape[2:4] + (-1,))
            skips.append(nn.Conv(feats[level], (1, 1), name=f"combine_{level}")(stacked))

        h = Bottleneck(feats[-1], self.dropout, self.remat)(skips[-1], None, train)
        attn = tuple(self.attention_levels)
        decoder = Decoder(feats, attn, self.num_res_blocks, self.out_channels, self.dropout, self.remat)
        logits = decoder(h, skips, None, train)
        # the classifier runs always, so `init` creates its parameters whatever `return_aux` says
        pooled = jnp.mean(specific[-1], axis=(2, 3))  # [B,M,c]
        modality_logits = nn.Dense(num_mod, name="modality_classifier")(pooled)
        if not return_aux:
            return logits
        aux = {"shared": shared[-1], "fused": bottom_fused, "modality_logits": modality_logits}
        return logits, aux | {"available": available}
