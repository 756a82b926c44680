"""Deterministic U-Net (BCE + soft Dice) through the same data and evaluation path as the diffusion models.

Presets mirror configs/btsegdiff.py (same data, step budget and image size), so rows compare fairly.
"""

from diffseg_jax.config_defaults import base_config, parse_preset


def get_config(arg: str | None = None):
    preset = parse_preset(arg)
    c = base_config(preset)
    c.method = "unet_baseline"

    c.model = m = c.__class__()
    m.base_features = 16
    m.multipliers = (1, 2, 4, 8)
    m.num_res_blocks = 1
    m.attention_levels = (3,)
    m.dropout = 0.0

    if preset == "smoke":
        m.base_features = 8
        m.multipliers = (1, 2)
        m.attention_levels = (1,)
    elif preset == "paper":
        m.base_features = 64
        m.multipliers = (1, 1, 2, 2, 4, 4)
        m.num_res_blocks = 2
        m.attention_levels = (4, 5)
    return c
