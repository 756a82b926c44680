"""AnoDDPM: eps-prediction DDPM (linear betas) on simplex noise; noise to lambda = 250 and denoise back.

The default denoises back with 10 DDIM steps; `:paper` runs the full 250-step DDPM chain.
"""

from diffseg_jax.config_defaults import anomaly_config


def get_config(arg: str | None = None):
    c = anomaly_config(arg, "anoddpm")
    c.diffusion.schedule = "linear"
    c.diffusion.parameterization = "eps"
    c.anomaly.noise = "simplex"
    c.anomaly.squared_error = True
    return c
