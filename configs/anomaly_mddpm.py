"""mDDPM: pDDPM plus masked image / frequency modelling (a box shows a low- or high-pass image)."""

from diffseg_jax.config_defaults import anomaly_config


def get_config(arg: str | None = None):
    c = anomaly_config(arg, "mddpm")
    c.anomaly.corruption = "mddpm"
    return c
