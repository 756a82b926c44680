"""MedSegDiff-V1: dual encoders fused by dynamic conditional encoding with the FF-Parser."""

from __future__ import annotations

import ml_collections

from diffseg_jax.methods.base import Method, unet_kwargs
from diffseg_jax.methods.conditional_diffusion import build_conditional_diffusion
from diffseg_jax.models.dual_encoder import DualEncoderNet, middle_levels


def dce_levels(config: ml_collections.ConfigDict) -> tuple[int, ...] | None:
    """`model.dce_levels`: 'all', 'middle' (the paper's middle two stages) or level indices such as '1,2'."""
    levels = str(config.model.get("dce_levels", "all")).strip()
    if levels == "all":
        return None
    if levels == "middle":
        return middle_levels(len(config.model.multipliers))
    try:
        return tuple(int(i) for i in levels.split(","))
    except ValueError:
        raise ValueError(
            f"unknown model.dce_levels {levels!r}; expected 'all', 'middle' or level indices such as '1,2'"
        ) from None


def build(config: ml_collections.ConfigDict) -> Method:
    model = DualEncoderNet(
        **unet_kwargs(config),
        fusion="medsegdiff_v1",
        fourier=config.model.ff_parser,
        fusion_levels=dce_levels(config),
    )
    return build_conditional_diffusion("medsegdiff_v1", model, config)
