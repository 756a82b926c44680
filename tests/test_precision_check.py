"""bfloat16 compute against float32 on the CPU: the same loss within a measured tolerance, but not the same.

tests/test_runtime.py checks that bfloat16 keeps float32 parameters and gradients and that its convolutions
are bfloat16; this checks, per method, that the loss it trains on stays close to the float32 one.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax.methods.registry import build_method

# Measured |loss_bf16 - loss_f32| / |loss_f32| on the smoke presets (random init, 32 px, batch 2), over 8
# seeds of parameters, batch and key: at most 1.3e-4 (BTSegDiff), 7.3e-5 (U-Net), and 1.7e-5 / 2.1e-5 on the
# seed below. At initialisation the outputs are small next to the targets, so the loss moves far less than
# bfloat16's 2^-8 rounding. The tolerance is about 4x the largest measured difference.
RELATIVE_TOLERANCE = 5e-4
# float32's rounding is 6e-8 (the eager float32 loss equals the jitted one bit for bit): a difference above
# this, 16x below the one measured, is bfloat16's.
MIN_RELATIVE_DIFFERENCE = 1e-6

METHODS = ["btsegdiff"]  # the other methods' layers are its own, but for MedSegDiff-V2's anchor (below)


def _config(name: str, dtype: str):
    config = importlib.import_module(f"configs.{name}").get_config("smoke")
    config.model.dtype = dtype
    return config


def _batch(target: str) -> dict[str, jnp.ndarray]:
    rng = np.random.default_rng(0)
    channels = 3 if target == "regions" else 1
    return {
        "image": jnp.asarray(rng.normal(size=(2, 32, 32, 4)), jnp.float32),
        "label": jnp.asarray(rng.random((2, 32, 32, channels)) > 0.8, jnp.float32),
    }


@pytest.mark.parametrize("name", METHODS)
def test_bfloat16_loss_is_close_to_float32_but_not_equal(name):
    f32, bf16 = _config(name, "float32"), _config(name, "bfloat16")
    batch = _batch(f32.data.target)
    params = build_method(f32).init(jax.random.PRNGKey(0), batch)
    key = jax.random.PRNGKey(1)
    loss16 = float(jax.jit(build_method(bf16).loss)(params, batch, key)[0])
    loss32 = float(jax.jit(build_method(f32).loss)(params, batch, key)[0])
    relative = abs(loss16 - loss32) / abs(loss32)
    assert relative < RELATIVE_TOLERANCE, (loss16, loss32)
    assert relative > MIN_RELATIVE_DIFFERENCE, (loss16, loss32)


def test_the_anchors_blur_computes_in_its_inputs_dtype():
    from diffseg_jax.models.anchor import depthwise_blur, gaussian_kernel

    kernel = gaussian_kernel(5, jnp.zeros(2), jnp.float32(1.0))
    features = jnp.ones((1, 8, 8, 3), jnp.bfloat16)
    blurred = depthwise_blur(features, kernel)  # a float32 kernel on bfloat16 features
    assert blurred.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(blurred[0, 4, 4], np.float32), 1.0, atol=1e-2)  # sums to 1
