"""pDDPM: patch-wise noising on a 2x2 grid, x0-prediction, L1 on the patch (see methods/patched_ddpm.py).

Presets: `:smoke` (tests), default (CPU demo, 64 x 64 x 32), `:paper` (96 x 96 x 50). T2 by default;
`--config.data.sequences=t1` for T1.
"""

from diffseg_jax.config_defaults import anomaly_config


def get_config(arg: str | None = None):
    return anomaly_config(arg, "pddpm")
