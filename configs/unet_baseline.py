"""Deterministic U-Net (BCE + soft Dice) through the same data and evaluation path as the diffusion models.

Presets mirror configs/btsegdiff.py (same data, step budget and image size, and at `:real` the same
sequence dropout), so rows compare fairly.
"""

from diffseg_jax.config_defaults import base_config, parse_preset, unet_model_config


def get_config(arg: str | None = None):
    preset = parse_preset(arg)
    c = base_config(preset)
    c.method = "unet_baseline"

    c.model = unet_model_config(preset)
    if preset == "real":
        c.train.sequence_dropout = 0.5  # regularises what few real cases teach (docs/results.md)
    return c
