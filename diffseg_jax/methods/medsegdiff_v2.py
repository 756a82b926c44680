"""MedSegDiff-V2: anchor condition (U-SA) + semantic condition (SS-Former with NBP filter).

Loss = diffusion loss + [t = 0 (mod alpha)] * (Dice + beta * CE) of the condition model's own output, per
example (the paper's L_noise + [t mod alpha = 0](L_dice + beta L_ce)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffseg_jax.methods.base import Method, per_example_soft_dice_loss, unet_kwargs
from diffseg_jax.methods.conditional_diffusion import build_conditional_diffusion
from diffseg_jax.models.medsegdiff_v2 import MedSegDiffV2Net


def condition_model_loss(logits: jnp.ndarray, label: jnp.ndarray, t: jnp.ndarray, alpha: int, beta: float):
    """Mean over the batch of [t mod alpha == 0] * (soft Dice + beta * BCE), each per example."""
    dice = per_example_soft_dice_loss(jax.nn.sigmoid(logits), label)
    ce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, label), axis=(1, 2, 3))
    selected = (t % alpha == 0).astype(jnp.float32)
    return jnp.mean(selected * (dice + beta * ce)), {"condition_dice_loss": jnp.mean(dice)}


def build(config: ml_collections.ConfigDict) -> Method:
    m, lo = config.model, config.loss
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
