"""MedSegDiff-V1: dual encoders fused by dynamic conditional encoding with the FF-Parser."""

from __future__ import annotations

import ml_collections

from diffseg_jax.methods.base import Method, unet_kwargs
from diffseg_jax.methods.conditional_diffusion import build_conditional_diffusion
from diffseg_jax.models.dual_encoder import DualEncoderNet


def build(config: ml_collections.ConfigDict) -> Method:
    model = DualEncoderNet(**unet_kwargs(config), fusion="medsegdiff_v1", fourier=config.model.ff_parser)
    return build_conditional_diffusion("medsegdiff_v1", model, config)
