"""MedSegDiff-V1 and -V2 parts against their formulas, their switches, and that every layer is trained."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import medsegdiff_v1 as v1_config
from configs import medsegdiff_v2 as v2_config
from diffseg_jax.config_defaults import ConfigError
from diffseg_jax.methods.conditional_diffusion import condition_model_loss
from diffseg_jax.methods.registry import build_method
from diffseg_jax.models.anchor import SpatialAttentionAnchor, gaussian_kernel
from diffseg_jax.models.fusion import DynamicConditionalEncoding
from diffseg_jax.models.medsegdiff_v2 import MedSegDiffV2Net
from diffseg_jax.models.ss_former import SpectralCrossAttention, SSFormer


def _perturbed(params, scale=0.05, seed=0):
    """Zero-initialised layers hide dependencies at init: move every parameter off its init."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(
        tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )


def _layer_norm(x, scale, bias):
    mu = x.mean(axis=(1, 2, 3), keepdims=True)
    var = x.var(axis=(1, 2, 3), keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * scale + bias


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def test_dynamic_conditional_encoding_equals_formula():
    rng = np.random.default_rng(0)
    m_x = rng.normal(size=(2, 8, 6, 4)).astype(np.float32)
    m_img = rng.normal(size=(2, 8, 6, 4)).astype(np.float32)
    module = DynamicConditionalEncoding()
    params = _perturbed(module.init(jax.random.PRNGKey(0), m_x, m_img)["params"], 0.3)
    p = jax.tree.map(np.asarray, params)
    w = p["FFParser_0"]["SpectralWeight_0"]["real"] + 1j * p["FFParser_0"]["SpectralWeight_0"]["imag"]
    parsed = np.fft.irfft2(
        np.fft.rfft2(m_x, axes=(1, 2), norm="ortho") * w, s=(8, 6), axes=(1, 2), norm="ortho"
    )
    ln_img = _layer_norm(m_img, p["LayerNorm_0"]["scale"], p["LayerNorm_0"]["bias"])
    ln_x = _layer_norm(parsed, p["LayerNorm_1"]["scale"], p["LayerNorm_1"]["bias"])
    expected = parsed + ln_img * ln_x * m_img
    np.testing.assert_allclose(module.apply({"params": params}, m_x, m_img), expected, atol=1e-4)
    # Without a condition, the next layer receives exactly the FF-Parser's filtered features.
    alone = module.apply({"params": params}, m_x, np.zeros_like(m_img))
    np.testing.assert_allclose(alone, parsed, atol=1e-5)
    assert not np.allclose(alone, m_x, atol=1e-2)


def test_dce_levels_middle_fuses_only_the_middle_two_stages():
    config = v1_config.get_config("smoke")
    config.model.multipliers = (1, 2, 2, 2)
    config.model.attention_levels = ()
    batch = {"image": jnp.ones((1, 16, 16, 4)), "label": jnp.zeros((1, 16, 16, 3))}

    def params():  # traced, not run: which modules exist is a matter of structure
        return jax.eval_shape(build_method(config).init, jax.random.PRNGKey(0), batch)

    config.model.dce_levels = "all"
    every = params()
    config.model.dce_levels = "middle"
    middle = params()
    assert sorted(k for k in every if k.startswith("fusions_")) == [f"fusions_{i}" for i in range(4)]
    assert sorted(k for k in middle if k.startswith("fusions_")) == ["fusions_0", "fusions_1"]
    # The condition encoder stops at the deepest fused level (2 of 0..3).
    assert "cond_levels_3" in every and "cond_levels_3" not in middle and "cond_levels_2" in middle
    config.model.dce_levels = "1,2"
    explicit = params()
    assert jax.tree.structure(explicit) == jax.tree.structure(middle)
    assert v1_config.get_config("paper").model.dce_levels == "middle"
    for bad in ("centre", "1,4"):  # not a level name; level 4 of 0..3
        config.model.dce_levels = bad
        with pytest.raises(ConfigError, match="dce_levels"):
            build_method(config)


def test_gaussian_kernel_is_normalised_centred_on_its_mean_and_widens_with_sigma():
    k = np.asarray(gaussian_kernel(7, jnp.array([0.0, 0.0]), jnp.array(1.0)))
    assert k.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.unravel_index(k.argmax(), k.shape) == (3, 3)
    np.testing.assert_allclose(k, k.T, atol=1e-7)
    shifted = np.asarray(gaussian_kernel(7, jnp.array([2.0, -1.0]), jnp.array(1.0)))
    assert np.unravel_index(shifted.argmax(), k.shape) == (5, 2)
    wide = np.asarray(gaussian_kernel(7, jnp.array([0.0, 0.0]), jnp.array(3.0)))
    assert wide[3, 3] < k[3, 3] and wide[0, 0] > k[0, 0]


def test_gaussian_kernel_has_gradients_for_its_mean_and_variance():
    rng = np.random.default_rng(6)
    anchor = jnp.asarray(rng.normal(size=(1, 12, 12, 3)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(1, 12, 12, 3)), jnp.float32)
    module = SpatialAttentionAnchor()
    params = module.init(jax.random.PRNGKey(0), target, anchor)["params"]

    def loss(p):
        return jnp.sum((module.apply({"params": p}, target, anchor) - target) ** 2)

    grads = jax.grad(loss)(params)
    assert np.all(np.abs(np.asarray(grads["mean"])) > 0) and abs(float(grads["log_sigma"])) > 0


@pytest.mark.parametrize("uncertain", [True, False])
def test_spatial_attention_anchor_equals_formula(uncertain):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(2, 10, 10, 6)).astype(np.float32)
    anchor = rng.normal(size=(2, 10, 10, 5)).astype(np.float32)
    module = SpatialAttentionAnchor(uncertain=uncertain)
    params = _perturbed(module.init(jax.random.PRNGKey(0), feats, anchor)["params"], 0.3)
    p = jax.tree.map(np.asarray, params)
    f_anc = anchor
    if uncertain:
        k = np.asarray(gaussian_kernel(5, jnp.asarray(p["mean"]), jnp.exp(p["log_sigma"])))
        padded = np.pad(anchor, ((0, 0), (2, 2), (2, 2), (0, 0)))
        blurred = sum(k[i, j] * padded[:, i : i + 10, j : j + 10] for i in range(5) for j in range(5))
        f_anc = np.maximum(blurred, anchor)
    gate = _sigmoid(f_anc @ p["Conv_0"]["kernel"][0, 0] + p["Conv_0"]["bias"])
    expected = gate * feats + feats
    np.testing.assert_allclose(module.apply({"params": params}, feats, anchor), expected, atol=1e-4)
    assert ("mean" in p) == uncertain


def test_nbp_filter_makes_the_spectral_attention_depend_on_the_step():
    rng = np.random.default_rng(2)
    query = jnp.asarray(rng.normal(size=(2, 8, 8, 8)), jnp.float32)
    context = jnp.asarray(rng.normal(size=(2, 8, 8, 8)), jnp.float32)
    temb_a = jnp.asarray(rng.normal(size=(2, 32)), jnp.float32)
    temb_b = jnp.asarray(rng.normal(size=(2, 32)), jnp.float32)
    for nbp in (True, False):
        module = SpectralCrossAttention(nbp_filter=nbp)
        params = _perturbed(module.init(jax.random.PRNGKey(0), query, context, temb_a)["params"], 0.2)
        out_a = module.apply({"params": params}, query, context, temb_a)
        out_b = module.apply({"params": params}, query, context, temb_b)
        assert np.allclose(out_a, out_b, atol=1e-6) != nbp
        other = jnp.roll(context, 3, axis=1)  # tokens are layer-normalised: a rescaled context is the same
        assert not np.allclose(out_a, module.apply({"params": params}, query, other, temb_a), atol=1e-4)
        assert ("NBPFilter_0" in params) == nbp


def test_ss_former_starts_as_identity_and_keeps_shape():
    rng = np.random.default_rng(3)
    noisy = jnp.asarray(rng.normal(size=(1, 4, 6, 16)), jnp.float32)
    semantic = jnp.asarray(rng.normal(size=(1, 4, 6, 16)), jnp.float32)
    temb = jnp.zeros((1, 32))
    module = SSFormer(num_blocks=2)
    params = module.init(jax.random.PRNGKey(0), noisy, semantic, temb)
    out = module.apply(params, noisy, semantic, temb)
    assert out.shape == noisy.shape
    np.testing.assert_allclose(out, noisy, atol=1e-6)  # zero-initialised output projections


@pytest.mark.parametrize("size", [48, 96])
def test_v2_builds_at_any_divisible_size_and_switches_remove_their_layers(size):
    x_t = jnp.zeros((1, size, size, 3))
    image = jnp.ones((1, size, size, 4))
    t = jnp.array([5])
    kwargs = dict(out_channels=3, base_features=8, multipliers=(1, 2, 2), attention_levels=(2,))

    def params(**switches):  # traced, not run: building is a matter of shapes
        net = MedSegDiffV2Net(**kwargs, **switches)
        return jax.eval_shape(net.init, jax.random.PRNGKey(0), x_t, t, image)["params"]

    full = params()
    assert "anchor_attention" in full and "semantic_former" in full
    nbp = full["semantic_former"]["SpectralCrossAttention_0"]["NBPFilter_0"]["base"]
    assert nbp.shape == (size // 4, size // 8 + 1, 16)
    plain = params(anchor="plain", ss_former=False)
    assert "mean" not in plain["anchor_attention"] and "semantic_former" not in plain
    no_nbp = params(nbp_filter=False)
    assert "NBPFilter_0" not in no_nbp["semantic_former"]["SpectralCrossAttention_0"]
    out = jax.eval_shape(MedSegDiffV2Net(**kwargs).apply, {"params": full}, x_t, t, image)
    assert out.shape == (1, size, size, 3)


def test_condition_loss_only_counts_steps_divisible_by_alpha():
    rng = np.random.default_rng(4)
    logits = jnp.asarray(rng.normal(size=(4, 8, 8, 3)), jnp.float32)
    label = jnp.asarray(rng.random((4, 8, 8, 3)) > 0.7, jnp.float32)
    t = jnp.array([0, 1, 2, 3])
    every, _ = condition_model_loss(logits, label, t, alpha=1, beta=0.5)
    per_example = [
        float(condition_model_loss(logits[i : i + 1], label[i : i + 1], t[:1], 1, 0.5)[0]) for i in range(4)
    ]
    assert float(every) == pytest.approx(np.mean(per_example), rel=1e-5)
    half, _ = condition_model_loss(logits, label, t, alpha=2, beta=0.5)
    assert float(half) == pytest.approx((per_example[0] + per_example[2]) / 4, rel=1e-5)


@pytest.mark.parametrize("config_module", [v1_config, v2_config])
def test_every_parameter_is_trained(config_module):
    """No layer is dead or rebuilt per call: the loss has a gradient for every parameter array."""
    config = config_module.get_config("smoke")
    method = build_method(config)
    rng = np.random.default_rng(5)
    label = (rng.random((4, 32, 32, 3)) > 0.8).astype(np.float32)
    batch = {"image": jnp.asarray(rng.normal(size=(4, 32, 32, 4)), jnp.float32), "label": jnp.asarray(label)}
    params = _perturbed(method.init(jax.random.PRNGKey(0), batch))
    grads = jax.jit(jax.grad(lambda p: method.loss(p, batch, jax.random.PRNGKey(1))[0]))(params)
    dead = [
        jax.tree_util.keystr(path)
        for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]
        if not np.any(np.asarray(g))
    ]
    assert not dead, dead


def test_mean_fusion_switch_fuses_the_same_chains_differently():
    config = v1_config.get_config("smoke")
    rng = np.random.default_rng(7)
    images = jnp.asarray(rng.normal(size=(2, 32, 32, 4)), jnp.float32)
    batch = {"image": images, "label": jnp.zeros((2, 32, 32, 3))}
    params = _perturbed(build_method(config).init(jax.random.PRNGKey(0), batch), 0.1)
    outs = {}
    for fusion in ("mean", "stepwise", "staple"):
        config.sampling.fusion = fusion
        outs[fusion] = build_method(config).predict(params, images, jax.random.PRNGKey(3))
    p = np.clip(np.asarray(outs["mean"]["prob"]), 1e-6, 1 - 1e-6)  # fused chains: the entropy of the mean
    entropy_bits = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    np.testing.assert_allclose(outs["mean"]["uncertainty"], entropy_bits, atol=1e-5)
    assert not np.allclose(outs["mean"]["prob"], outs["stepwise"]["prob"], atol=1e-4)
    assert not np.allclose(outs["mean"]["prob"], outs["staple"]["prob"], atol=1e-4)
    config.sampling.fusion = "median"
    with pytest.raises(ValueError, match="sampling.fusion"):
        build_method(config)
