"""MedSegDiff-V2: anchor condition (U-SA) + semantic condition (SS-Former with NBP filter).

Loss = diffusion loss + [t = 0 (mod alpha)] * (Dice + beta * CE) of the condition model's own output, per
example (the paper's L_noise + [t mod alpha = 0](L_dice + beta L_ce)).
"""

from __future__ import annotations

import ml_collections

from diffseg_jax.config_defaults import ConfigError
from diffseg_jax.methods.base import Method, unet_kwargs
from diffseg_jax.methods.conditional_diffusion import build_conditional_diffusion, condition_model_loss
from diffseg_jax.models.medsegdiff_v2 import MedSegDiffV2Net


def build(config: ml_collections.ConfigDict) -> Method:
    m, lo = config.model, config.loss
    if lo.get("condition_head_weight", 0.0):
        raise ConfigError(
            "loss.condition_head_weight is for the dual-encoder methods; MedSegDiff-V2 "
            "supervises its condition model with loss.condition_every / condition_ce_weight"
        )
    model = MedSegDiffV2Net(
        **unet_kwargs(config),
        anchor=m.anchor,
        ss_former=m.ss_former,
        nbp_filter=m.nbp_filter,
        ss_former_blocks=m.ss_former_blocks,
    )

    def extra_loss(intermediates, batch, t):
        (logits,) = intermediates["condition_logits"]
        return condition_model_loss(logits, batch["label"], t, lo.condition_every, lo.condition_ce_weight)

    return build_conditional_diffusion("medsegdiff_v2", model, config, extra_loss)
