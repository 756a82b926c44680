"""M2DN: only the missing sequences are diffused, the code reaches the net, sampling keeps the condition."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import m2dn as m2dn_config
from diffseg_jax.diffusion.schedules import make_schedule
from diffseg_jax.methods import m2dn
from diffseg_jax.methods.base import unet_kwargs
from diffseg_jax.methods.registry import build_method
from diffseg_jax.models.m2dn import M2DNNet, ModalityEncoder, SqueezeExcitation
from diffseg_jax.tasks import synthesis

SIZE = 16


def _config():
    c = m2dn_config.get_config("smoke")
    c.data.image_size = SIZE
    c.model.multipliers = (1,)  # one level (+ the bottleneck): the smallest net, the quickest compile
    c.model.attention_levels = ()
    c.sampling.num_steps = 3
    return c


def _correlated_images(key, batch: int) -> jnp.ndarray:
    """Four z-score-like channels that are affine maps of one smooth field (so one predicts another)."""
    field = jax.random.normal(key, (batch, SIZE // 4, SIZE // 4))
    field = jnp.repeat(jnp.repeat(field, 4, axis=1), 4, axis=2)
    scale = jnp.array([1.0, -0.8, 0.6, 1.2])
    shift = jnp.array([0.3, -0.2, 0.5, 0.1])
    return field[..., None] * scale + shift


@pytest.fixture(scope="module")
def method_and_params():
    config = _config()
    method = build_method(config)
    images = _correlated_images(jax.random.PRNGKey(0), 4)
    params = jax.jit(method.init)(jax.random.PRNGKey(1), {"image": images, "label": images[..., :3]})
    return config, method, params


def test_only_missing_channels_are_noised():
    schedule = make_schedule("linear", 1000)
    x0 = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
    noise = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
    missing = jnp.array([[True, False, False, True], [False, True, True, True]])
    m_t = np.asarray(m2dn.noised_input(x0, missing, jnp.array([500, 999]), noise, schedule))
    x0 = np.asarray(x0)
    for b in range(2):
        for k in range(4):
            if missing[b, k]:
                assert not np.allclose(m_t[b, ..., k], x0[b, ..., k])
            else:
                np.testing.assert_array_equal(m_t[b, ..., k], x0[b, ..., k])


def test_availability_code_changes_the_output(method_and_params):
    # At init every ResBlock's zero-initialised second conv makes it linear, so the code is a constant
    # per-channel shift that the head's GroupNorm erases; perturb the params as training would.
    config, _, params = method_and_params
    rng = np.random.default_rng(0)  # on the host: no per-shape RNG compilations
    params = jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape, np.float32), params)
    net = M2DNNet(**{**unet_kwargs(config), "out_channels": 4})
    m_t = jax.random.normal(jax.random.PRNGKey(0), (1, SIZE, SIZE, 4))
    t = jnp.array([10])
    code_a, code_b = jnp.array([[1.0, 0, 0, 0]]), jnp.array([[0, 0, 1.0, 1.0]])
    apply = jax.jit(net.apply)

    def gap(p):
        out_a, out_b = apply({"params": p}, m_t, t, code_a), apply({"params": p}, m_t, t, code_b)
        assert out_a.shape == (1, SIZE, SIZE, 4)
        return float(jnp.max(jnp.abs(out_a - out_b)))

    assert gap(params) > 1e-3
    # the bottleneck concatenation alone (code embedding into the time vector switched off) also reaches it
    no_temb = {**params, "code_embedding": jax.tree.map(jnp.zeros_like, params["code_embedding"])}
    assert gap(no_temb) > 1e-3
    assert len([k for k in params if k.startswith("encoder_")]) == 4  # one encoder per sequence


def test_sequence_encoders_are_strided_conv_groupnorm_relu_then_squeeze_excitation(method_and_params):
    _, _, params = method_and_params
    encoder = params["encoder_0"]
    assert set(encoder) == {"Conv_0", "GroupNorm_0"}
    x = jax.random.normal(jax.random.PRNGKey(4), (2, SIZE, SIZE, 1))
    out = ModalityEncoder(encoder["Conv_0"]["kernel"].shape[-1]).apply({"params": encoder}, x)
    assert out.shape[1:3] == (SIZE // 2, SIZE // 2) and float(out.min()) >= 0.0  # stride 2, ReLU
    # The SE block: one gate per channel from the pooled map, as the numpy formula says.
    se = params["channel_attention"]
    feats = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (2, 8, 8, se["excite"]["kernel"].shape[-1])))
    pooled = feats.mean(axis=(1, 2))
    hidden = np.maximum(pooled @ se["squeeze"]["kernel"] + se["squeeze"]["bias"], 0.0)
    gate = 1 / (1 + np.exp(-(hidden @ se["excite"]["kernel"] + se["excite"]["bias"])))
    got = SqueezeExcitation().apply({"params": se}, jnp.asarray(feats))
    np.testing.assert_allclose(got, feats * gate[:, None, None, :], rtol=1e-5, atol=1e-6)


def test_training_patterns_are_proper_and_cover_all_fourteen():
    missing = np.asarray(m2dn.draw_missing(jax.random.PRNGKey(0), 1000))
    counts = missing.sum(axis=1)
    assert counts.min() >= 1 and counts.max() <= 3
    assert len({tuple(row) for row in missing}) == 14
    assert len(synthesis.PATTERNS) == 14


def test_predict_keeps_available_channels_and_fills_missing(method_and_params):
    _, method, params = method_and_params
    images = np.array(_correlated_images(jax.random.PRNGKey(2), 4))
    images[0, ..., 1] = 0.0  # t1ce missing
    images[1, ..., [0, 2, 3]] = 0.0  # only t1ce given
    images[2, ..., 3] = 0.0  # flair missing; example 3 has everything
    out = np.asarray(jax.jit(method.predict)(params, jnp.asarray(images), jax.random.PRNGKey(3))["synthesis"])
    available = np.any(images != 0, axis=(1, 2))
    for b in range(4):
        for k in range(4):
            if available[b, k]:
                np.testing.assert_array_equal(out[b, ..., k], images[b, ..., k])
            else:
                assert np.all(np.isfinite(out[b, ..., k])) and np.any(out[b, ..., k] != 0)
    full = np.asarray(_correlated_images(jax.random.PRNGKey(4), 4))
    same = jax.jit(method.predict)(params, jnp.asarray(full), jax.random.PRNGKey(5))["synthesis"]
    np.testing.assert_array_equal(np.asarray(same), full)


def test_loss_falls_with_adam(method_and_params):
    _, method, params = method_and_params
    batch = {"image": _correlated_images(jax.random.PRNGKey(6), 8)}
    tx = optax.adam(2e-3)

    @jax.jit
    def step(p, opt, key):
        (value, aux), grads = jax.value_and_grad(method.loss, has_aux=True)(p, batch, key)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, value, aux

    def mean_loss(p, opt):  # the loss before the update, over fixed keys (one compiled function)
        return np.mean([float(step(p, opt, jax.random.PRNGKey(1000 + i))[2]) for i in range(6)])

    p, opt = params, tx.init(params)
    before = mean_loss(p, opt)
    for i in range(30):
        p, opt, _, aux = step(p, opt, jax.random.PRNGKey(100 + i))
    after = mean_loss(p, opt)
    assert {"mse", "mse_missing", "mse_available"} <= set(aux)
    assert after < 0.7 * before, (before, after)


def test_validation_scores_report_psnr_per_sequence():
    images = np.asarray(_correlated_images(jax.random.PRNGKey(8), 3))

    def perfect(inputs):  # a synthesiser that knows the answer, tiled over the four drop patterns
        return {"synthesis": np.concatenate([images] * 4)[: len(inputs)]}

    scores = synthesis.validation_scores(perfect, {"image": images}, None)
    assert set(scores) == {"val/psnr"} | {f"val/psnr_{m}" for m in ("t1", "t1ce", "t2", "flair")}
    assert np.isinf(scores["val/psnr"])
