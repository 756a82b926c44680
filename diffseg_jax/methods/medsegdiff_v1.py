"""MedSegDiff-V1: dual encoders fused by dynamic conditional encoding with the FF-Parser."""

from __future__ import annotations

import ml_collections

from diffseg_jax.config_defaults import ConfigError
from diffseg_jax.methods.base import Method, unet_kwargs
from diffseg_jax.methods.conditional_diffusion import (
    build_conditional_diffusion,
    condition_head_kwargs,
    condition_head_loss,
)
from diffseg_jax.models.dual_encoder import DualEncoderNet, middle_levels


def dce_levels(config: ml_collections.ConfigDict) -> tuple[int, ...] | None:
    """`model.dce_levels`: 'all', 'middle' (the paper's middle two stages) or level indices such as '1,2'."""
    levels = str(config.model.get("dce_levels", "all")).strip()
    num_levels = len(config.model.multipliers)
    if levels == "all":
        return None
    if levels == "middle":
        return middle_levels(num_levels)
    expected = f"expected 'all', 'middle' or level indices in 0..{num_levels - 1} such as '1,2'"
    try:
        chosen = tuple(int(i) for i in levels.split(","))
    except ValueError:
        raise ConfigError(f"unknown model.dce_levels {levels!r}; {expected}") from None
    if any(not 0 <= i < num_levels for i in chosen):
        raise ConfigError(f"model.dce_levels {levels!r} out of range; {expected}")
    return chosen


def build(config: ml_collections.ConfigDict) -> Method:
    model = DualEncoderNet(
        **unet_kwargs(config),
        fusion="medsegdiff_v1",
        fourier=config.model.ff_parser,
        fusion_levels=dce_levels(config),
        **condition_head_kwargs(config),
    )
    return build_conditional_diffusion("medsegdiff_v1", model, config, condition_head_loss(config))
