"""Maps `config.method` to the module that builds it."""

from __future__ import annotations

import dataclasses
import importlib

import jax
import ml_collections

from diffseg_jax.config_defaults import ConfigError
from diffseg_jax.methods.base import Method

_METHODS = {
    "btsegdiff": "diffseg_jax.methods.btsegdiff",
    "medsegdiff_v1": "diffseg_jax.methods.medsegdiff_v1",
    "medsegdiff_v2": "diffseg_jax.methods.medsegdiff_v2",
    "unet_baseline": "diffseg_jax.methods.unet_baseline",
    # anomaly detection (trained on healthy brains; task 'anomaly')
    "dae": "diffseg_jax.methods.dae",
    "anoddpm": "diffseg_jax.methods.anoddpm",
    "pddpm": "diffseg_jax.methods.patched_ddpm",
    "mddpm": "diffseg_jax.methods.patched_ddpm",
    "uma_ddpm": "diffseg_jax.methods.patched_ddpm",
    "m2dn": "diffseg_jax.methods.m2dn",  # missing-sequence synthesis (task 'synthesis')
    "synthesis_unet": "diffseg_jax.methods.m2dn",  # its deterministic baseline (one pass, no diffusion)
    "shaspec": "diffseg_jax.methods.shaspec",  # segmentation from any subset of the sequences
}


def available_methods() -> tuple[str, ...]:
    return tuple(sorted(_METHODS))


def build_method(config: ml_collections.ConfigDict) -> Method:
    name = config.method
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    try:
        method = importlib.import_module(_METHODS[name]).build(config)
    except ConfigError:
        raise
    except ValueError as err:  # a config value the method refuses (e.g. sampling.fusion): one line
        raise ConfigError(str(err)) from None
    # init compiled as one program: run eagerly, each of its hundreds of ops is compiled on its own, in
    # every process (seconds per smoke run; 50 s for the `real` BTSegDiff on the CPU, 36 s compiled).
    return dataclasses.replace(method, init=jax.jit(method.init))
