"""Fourier operators against numpy's FFT, and the networks at several image sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax.models.dual_encoder import DualEncoderNet
from diffseg_jax.models.fourier import FFParser, FourierFusion
from diffseg_jax.models.unet import UNet


def _complex_weight(params):
    return np.asarray(params["SpectralWeight_0"]["real"]) + 1j * np.asarray(
        params["SpectralWeight_0"]["imag"]
    )


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


@pytest.mark.parametrize("size", [(8, 8), (12, 10)])
def test_ff_parser_equals_numpy_formula(size):
    x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
    module = FFParser(std=0.5)
    params = module.init(jax.random.PRNGKey(0), jnp.asarray(x))["params"]
    w = _complex_weight(params)
    assert w.shape == (size[0], size[1] // 2 + 1, 3)
    expected = np.fft.irfft2(
        np.fft.rfft2(x, axes=(1, 2), norm="ortho") * w, s=size, axes=(1, 2), norm="ortho"
    )
    np.testing.assert_allclose(module.apply({"params": params}, x), expected, atol=1e-5)


def test_fourier_fusion_equals_numpy_formula():
    rng = np.random.default_rng(1)
    m_xt = rng.normal(size=(2, 8, 6, 4)).astype(np.float32)
    m_img = rng.normal(size=(2, 8, 6, 4)).astype(np.float32)
    module = FourierFusion(std=0.5)
    params = module.init(jax.random.PRNGKey(0), m_xt, m_img)["params"]
    w = _complex_weight(params)
    z = np.fft.rfft2(m_xt, axes=(1, 2), norm="ortho") * w + np.fft.rfft2(m_img, axes=(1, 2), norm="ortho") * w
    gated = (_sigmoid(z.real) - 0.5) + 1j * (_sigmoid(z.imag) - 0.5)
    expected = np.fft.irfft2(gated, s=(8, 6), axes=(1, 2), norm="ortho")
    out = module.apply({"params": params}, m_xt, m_img)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # Both inputs matter.
    out2 = module.apply({"params": params}, m_xt, m_img * 2)
    assert not np.allclose(out, out2)


@pytest.mark.parametrize("fusion", ["btsegdiff", "medsegdiff_v1"])
@pytest.mark.parametrize("size", [48, 96])
def test_dual_encoder_builds_at_any_divisible_size(size, fusion):
    net = DualEncoderNet(
        out_channels=3, base_features=8, multipliers=(1, 2, 2), attention_levels=(2,), fusion=fusion
    )
    x_t = jnp.zeros((1, size, size, 3))
    image = jnp.ones((1, size, size, 4))
    t = jnp.array([10])
    params = net.init(jax.random.PRNGKey(0), x_t, t, image)
    out = net.apply(params, x_t, t, image)
    assert out.shape == (1, size, size, 3)
    parser = "FourierFusion_0" if fusion == "btsegdiff" else "FFParser_0"
    spectral = params["params"]["fusions_0"][parser]["SpectralWeight_0"]["real"]
    assert spectral.shape == (size, size // 2 + 1, 8)


def test_btsegdiff_split_encode_denoise_equals_full_call_and_uses_inputs():
    net = DualEncoderNet(out_channels=1, base_features=8, multipliers=(1, 2))
    rng = np.random.default_rng(0)
    x_t = jnp.asarray(rng.normal(size=(2, 16, 16, 1)), jnp.float32)
    image = jnp.asarray(rng.normal(size=(2, 16, 16, 4)), jnp.float32)
    t = jnp.array([3, 700])
    params = net.init(jax.random.PRNGKey(0), x_t, t, image)
    full = net.apply(params, x_t, t, image)
    cond = net.apply(params, image, method=DualEncoderNet.encode_condition)
    split = net.apply(params, x_t, t, cond, method=DualEncoderNet.denoise)
    np.testing.assert_allclose(full, split, atol=1e-5)
    # Output depends on the image, the noisy mask and the step (zero-init convs can hide this: perturb
    # the params first).
    params = jax.tree.map(lambda p: p + 0.05 * jnp.sign(p + 1e-3), params)
    base = net.apply(params, x_t, t, image)
    assert not np.allclose(base, net.apply(params, x_t, t, image * 0.5), atol=1e-4)
    assert not np.allclose(base, net.apply(params, x_t * 0.5, t, image), atol=1e-4)
    assert not np.allclose(base, net.apply(params, x_t, t + 100, image), atol=1e-4)


def test_indivisible_size_is_a_clear_error():
    net = UNet(out_channels=1, base_features=8, multipliers=(1, 2, 4))
    with pytest.raises(ValueError, match="not divisible"):
        net.init(jax.random.PRNGKey(0), jnp.zeros((1, 30, 30, 4)))
