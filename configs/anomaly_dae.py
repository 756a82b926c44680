"""DAE: a U-Net that removes coarse (1/8-resolution) Gaussian noise from healthy brains; L2 loss."""

from diffseg_jax.config_defaults import anomaly_config


def get_config(arg: str | None = None):
    return anomaly_config(arg, "dae")
