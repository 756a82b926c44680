"""BTSegDiff: dual encoders fused by dynamic conditional guidance + Fourier fusion, stepwise uncertainty."""

from __future__ import annotations

import ml_collections

from diffseg_jax.methods.base import Method, unet_kwargs
from diffseg_jax.methods.conditional_diffusion import (
    build_conditional_diffusion,
    condition_head_kwargs,
    condition_head_loss,
)
from diffseg_jax.models.dual_encoder import DualEncoderNet


def build(config: ml_collections.ConfigDict) -> Method:
    model = DualEncoderNet(
        **unet_kwargs(config),
        fusion="btsegdiff",
        fourier=config.model.fourier_fusion,
        **condition_head_kwargs(config),
    )
    return build_conditional_diffusion("btsegdiff", model, config, condition_head_loss(config))
