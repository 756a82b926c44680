"""ShaSpec: mean imputation of the shared features, no leak from a missing sequence, the losses, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import shaspec as shaspec_config
from diffseg_jax import modalities
from diffseg_jax.config_defaults import ConfigError
from diffseg_jax.methods.base import unet_kwargs
from diffseg_jax.methods.registry import build_method
from diffseg_jax.methods.shaspec import dao_loss, dco_loss
from diffseg_jax.models.shaspec import ShaSpecUNet, impute_shared

SIZE = 16


def _config():
    c = shaspec_config.get_config("smoke")
    c.data.image_size = SIZE
    c.model.multipliers = (1,)  # one level (+ the bottleneck): the smallest net, the quickest compile
    c.model.attention_levels = ()
    return c


def _blobs(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Discs of random centre/radius, a different contrast per sequence, noise; label = WT/TC/ET discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images, labels = [], []
    for _ in range(batch):
        cy, cx = rng.uniform(5, SIZE - 5, 2)
        r = rng.uniform(2.5, 4.5)
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        masks = [d < r, d < 0.7 * r, d < 0.4 * r]
        contrast = np.array([0.8, -1.0, 1.2, 1.5])
        img = masks[0][..., None] * contrast + 0.3 * rng.standard_normal((SIZE, SIZE, 4)) + 0.5
        images.append(img)
        labels.append(np.stack(masks, -1))
    return np.asarray(images, np.float32), np.asarray(labels, np.float32)


def _hard_dice(prob, label) -> float:
    pred = np.asarray(prob) > 0.5
    label = np.asarray(label) > 0.5
    return float(2 * (pred & label).sum() / max(pred.sum() + label.sum(), 1))


@pytest.fixture(scope="module")
def trained():
    """The method, its params before and after 30 Adam steps, and the losses along the way."""
    config = _config()
    method = build_method(config)
    images, labels = _blobs(4)
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    params0 = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, key):
        (loss, metrics), grads = jax.value_and_grad(method.loss, has_aux=True)(params, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, metrics

    params, opt_state, losses = params0, tx.init(params0), []
    for i in range(30):
        params, opt_state, loss, _ = step(params, opt_state, jax.random.PRNGKey(i))
        losses.append(float(loss))
    return config, method, batch, params0, params, losses


def test_impute_shared_is_mean_of_available_per_example():
    rng = np.random.default_rng(0)
    shared = rng.standard_normal((4, 4, 3, 2, 5)).astype(np.float32)
    available = np.array(
        [[True, False, True, False], [False, False, False, True], [True, True, True, True], [False] * 4]
    )
    out = np.asarray(impute_shared(jnp.asarray(shared), jnp.asarray(available)))
    for b in range(4):
        mean = shared[b, available[b]].mean(axis=0) if available[b].any() else np.zeros_like(shared[b, 0])
        for m in range(4):
            expected = shared[b, m] if available[b, m] else mean
            np.testing.assert_allclose(out[b, m], expected, rtol=1e-6, atol=1e-6)


def test_missing_sequence_feature_is_the_mean_of_the_available_shared_features():
    """The paper's fusion: a missing sequence's deepest feature is the available shared mean, unprojected."""
    config = _config()
    config.model.multipliers = (1, 2)
    net = ShaSpecUNet(**unet_kwargs(config), fuse_at="bottom")
    images, _ = _blobs(2, seed=2)
    images[..., 1] = 0.0
    params = jax.jit(net.init)(jax.random.PRNGKey(0), jnp.asarray(images))["params"]
    assert "fuse" in params and "fuse_0" not in params  # one fusion, at the bottom
    _, aux = net.apply({"params": params}, jnp.asarray(images), return_aux=True)
    shared, fused = np.asarray(aux["shared"]), np.asarray(aux["fused"])
    np.testing.assert_allclose(fused[:, 1], shared[:, [0, 2, 3]].mean(axis=1), rtol=1e-5, atol=1e-6)
    assert not np.allclose(fused[:, 0], shared[:, 0], atol=1e-4)  # available: shared + composed residual
    every = ShaSpecUNet(**unet_kwargs(config), fuse_at="every_level")
    params_every = jax.jit(every.init)(jax.random.PRNGKey(0), jnp.asarray(images))["params"]
    assert {"fuse_0", "fuse_1"} <= set(params_every)
    config.model.fuse_at = "middle"
    with pytest.raises(ConfigError, match="fuse_at"):
        build_method(config)


@pytest.mark.parametrize("fuse_at", ["bottom", "every_level"])
def test_missing_sequence_path_does_not_reach_the_output(fuse_at):
    # perturb the params (at init the zero-initialised ResBlock convs make the net nearly linear)
    config = _config()
    net = ShaSpecUNet(**unet_kwargs(config), fuse_at=fuse_at)
    images, _ = _blobs(2, seed=1)
    missing = 2  # t2
    images[..., missing] = 0.0
    params = jax.jit(net.init)(jax.random.PRNGKey(0), jnp.asarray(images))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape, np.float32), params)
    apply = jax.jit(lambda p, x, a: net.apply({"params": p}, x, available=a))
    available = modalities.available_from_image(jnp.asarray(images))
    assert not bool(available[:, missing].any()) and bool(available[:, [0, 1, 3]].all())
    reference = np.asarray(apply(params, images, available))

    # garbage in the missing channel (declared missing) and perturbed specific weights of that sequence
    garbage = images.copy()
    garbage[..., missing] = rng.standard_normal(garbage.shape[:3])
    perturbed = jax.tree.map(lambda x: x.copy(), params)

    def perturb(x):
        return x + rng.standard_normal(x.shape).astype(x.dtype)

    name = f"specific_encoder_{missing}"
    perturbed[name] = jax.tree.map(perturb, params[name])
    np.testing.assert_array_equal(np.asarray(apply(perturbed, garbage, available)), reference)

    # an available sequence does matter
    changed = images.copy()
    changed[..., 3] += rng.standard_normal(changed.shape[:3]).astype(np.float32)
    assert np.max(np.abs(np.asarray(apply(params, changed, available)) - reference)) > 1e-3


def test_all_15_subsets_run_with_finite_output(trained):
    _, method, batch, _, params, _ = trained
    subsets = modalities.all_subsets()
    table = jnp.asarray(np.array([modalities.availability_vector(s) for s in subsets]), bool)
    images = jnp.repeat(batch["image"][:1], len(subsets), axis=0)
    out = jax.jit(method.predict)(params, modalities.keep_channels(images, table), jax.random.PRNGKey(0))
    assert out["prob"].shape == (15, SIZE, SIZE, 3)
    assert bool(jnp.all(jnp.isfinite(out["prob"])))
    assert float(jnp.std(out["prob"], axis=0).max()) > 0  # the subset changes the segmentation


def test_loss_falls_and_dice_improves(trained):
    _, method, batch, params0, params, losses = trained
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses
    predict = jax.jit(method.predict)
    key = jax.random.PRNGKey(0)
    before = _hard_dice(predict(params0, batch["image"], key)["prob"], batch["label"])
    after = _hard_dice(predict(params, batch["image"], key)["prob"], batch["label"])
    assert after > before + 0.2 and after > 0.5, (before, after)


def test_dao_is_zero_with_one_sequence(trained):
    _, method, batch, _, params, _ = trained
    one = jnp.asarray(np.array([[False, False, False, True]] * batch["image"].shape[0]))
    single = {**batch, "image": modalities.keep_channels(batch["image"], one)}
    _, metrics = jax.jit(method.loss)(params, single, jax.random.PRNGKey(0))
    assert float(metrics["dao"]) == 0.0
    assert np.isfinite(float(metrics["dco"])) and float(metrics["seg"]) > 0
    shared = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 2, 2, 5))
    available = jnp.array(
        [[True, False, False, False], [False, True, False, False], [True, True, False, False]]
    )
    expected = jnp.mean(jnp.abs(shared[2, 0] - shared[2, 1]))  # the only pair of available sequences
    np.testing.assert_allclose(float(dao_loss(shared, available)), float(expected), rtol=1e-6)
    logits = jnp.zeros((3, 4, 4)).at[:, :, 0].set(10.0)  # always predicts t1
    assert float(dco_loss(logits, available[:1])) < 1e-3 < float(dco_loss(logits, available[1:2]))


def test_predict_shapes(trained):
    config, method, batch, _, params, _ = trained
    out = jax.jit(method.predict)(params, batch["image"], jax.random.PRNGKey(0))
    assert set(out) == {"prob", "uncertainty"}
    assert out["prob"].shape == out["uncertainty"].shape == (4, SIZE, SIZE, 3)
    assert bool(jnp.all((out["prob"] >= 0) & (out["prob"] <= 1)))
    assert config.method == "shaspec" and config.train.sequence_dropout == 0.5
    paper = shaspec_config.get_config("paper")
    assert (paper.train.optimizer, paper.train.learning_rate, paper.train.momentum) == ("sgd", 1e-2, 0.99)
