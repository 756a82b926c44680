"""AnoDDPM: eps-prediction DDPM (linear betas) on simplex noise; noise to lambda = 250 and denoise back.

The default denoises back with 10 DDIM steps; `:paper` runs the full 250-step DDPM chain. `:real` noises
less (lambda = 100) and averages the maps of four noise draws: on real tumours validation chose four draws on
every fold and lambda = 100 on two of three (docs/results.md, "On real tumours: three folds").
"""

from diffseg_jax.config_defaults import anomaly_config, parse_preset


def get_config(arg: str | None = None):
    c = anomaly_config(arg, "anoddpm")
    c.diffusion.schedule = "linear"
    c.diffusion.parameterization = "eps"
    c.anomaly.noise = "simplex"
    c.anomaly.squared_error = True
    if parse_preset(arg) == "real":
        # At lambda = 250 a real slice's healthy tissue is not rebuilt (SSIM 31%) and its residual hides the
        # tumour; each draw's healthy error is its own, so four draws average it out
        c.anomaly.start_step = 100
        c.anomaly.ensemble = 4
    return c
