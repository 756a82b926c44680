"""Deterministic U-Net regressor for missing sequences: the baseline M2DN's synthesis must beat.

M2DN's network, data, availability code and MSE (`configs/m2dn.py`, same presets), but the missing
channels are given as zeros at t = 0 and one forward pass predicts them: no diffusion, no sampling.
"""

from configs import m2dn


def get_config(arg: str | None = None):
    c = m2dn.get_config(arg)
    c.method = "synthesis_unet"
    return c
