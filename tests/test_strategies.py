"""Training strategies of the conditional-diffusion segmenters: recycling (Fu et al., MELBA 2023),
self-conditioning (Chen et al. 2022), importance sampling of t (Nichol & Dhariwal 2021) and the image-only
head on the condition encoder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import btsegdiff, medsegdiff_v2
from diffseg_jax.config_defaults import ConfigError
from diffseg_jax.methods.base import unet_kwargs
from diffseg_jax.methods.registry import build_method
from diffseg_jax.models.condition_head import ConditionHead
from diffseg_jax.models.dual_encoder import DualEncoderNet


def _smoke_16px(**diffusion):
    """BTSegDiff's smoke preset at 16 px with the given `diffusion` fields."""
    config = btsegdiff.get_config("smoke")
    config.data.image_size = 16
    config.diffusion.update(diffusion)
    return config


def _batch() -> dict[str, jnp.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "image": jnp.asarray(rng.normal(size=(2, 16, 16, 4)), jnp.float32),
        "label": jnp.asarray(rng.random((2, 16, 16, 3)) > 0.8, jnp.float32),
    }


def _loss(recycling: str, prob: float = 0.5, grads: bool = False):
    method = build_method(_smoke_16px(recycling=recycling, recycling_prob=prob))
    batch = _batch()
    params = method.init(jax.random.PRNGKey(0), batch)
    key = jax.random.PRNGKey(1)
    if not grads:
        return float(jax.jit(method.loss)(params, batch, key)[0]), None
    (value, _), grad = jax.jit(jax.value_and_grad(method.loss, has_aux=True))(params, batch, key)
    return float(value), grad


def test_recycling_builds_x_t_from_the_models_estimate_and_off_is_unchanged():
    off, _ = _loss("")
    never, _ = _loss("xt", prob=0.0)  # recycling nothing: the reference's x_t and noise, up to rounding
    assert never == pytest.approx(off, rel=1e-4)
    recycled_from_noise, _ = _loss("xT", prob=1.0)
    recycled, grads = _loss("xt", prob=1.0, grads=True)
    for value in (recycled_from_noise, recycled):  # trained on another x_t
        assert np.isfinite(value) and value != pytest.approx(off, rel=1e-3)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_an_unknown_recycling_mode_is_refused():
    config = btsegdiff.get_config("smoke")
    config.diffusion.recycling = "x0"
    with pytest.raises(ConfigError, match="diffusion.recycling"):  # one line from the CLI
        build_method(config)


def test_an_unknown_phantom_version_is_one_config_error():
    from data_pipelines import sources

    config = btsegdiff.get_config("smoke")
    config.data.phantom_version = 7
    with pytest.raises(ConfigError, match="data.phantom_version=7"):
        sources.dataset_root(config, progress=False)


def test_the_sampler_hands_each_step_the_estimate_of_the_step_before():
    from diffseg_jax.diffusion import samplers
    from diffseg_jax.diffusion.schedules import make_schedule

    schedule = make_schedule("linear", 100)

    def denoise(x_t, t, x0_prev):  # x0-prediction: one more tenth than the step before
        return x0_prev + 0.1

    out = samplers.sample(
        denoise, schedule, "x0", (1, 2, 2, 1), jax.random.PRNGKey(0), num_steps=5,
        return_trajectory=True, self_condition=True,
    )  # fmt: skip
    np.testing.assert_allclose(out["trajectory"][:, 0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4, 0.5], atol=1e-6)


def test_self_conditioning_feeds_the_mask_pathway_the_estimate_and_trains_and_samples():
    method = build_method(_smoke_16px(self_condition=True))
    batch = _batch()
    params = method.init(jax.random.PRNGKey(0), batch)
    assert params["noisy_in"]["kernel"].shape[2] == 6  # x_t and the previous estimate, 3 regions each
    assert np.isfinite(float(jax.jit(method.loss)(params, batch, jax.random.PRNGKey(0))[0]))
    out = jax.jit(method.predict)(params, batch["image"], jax.random.PRNGKey(2))
    assert out["prob"].shape == (2, 16, 16, 3) and np.isfinite(np.asarray(out["prob"])).all()


def test_recycling_ramps_its_probability_over_the_given_steps():
    method = build_method(_smoke_16px(recycling="xt", recycling_prob=1.0, recycling_ramp_steps=100))
    batch = _batch()
    params = method.init(jax.random.PRNGKey(0), batch)
    loss = jax.jit(method.loss)
    key = jax.random.PRNGKey(1)
    at = {step: float(loss(params, {**batch, "step": jnp.asarray(step)}, key)[0]) for step in (0, 100, 500)}
    off, _ = _loss("")
    assert at[0] == pytest.approx(off, rel=1e-4)  # probability 0 at the start: the reference's x_t
    assert at[100] == pytest.approx(at[500], rel=1e-6)  # the full probability from step 100 on
    assert at[100] != pytest.approx(off, rel=1e-3)


def test_importance_history_is_uniform_until_full_then_follows_the_losses_rms():
    from diffseg_jax.diffusion import importance

    history = importance.init_history(bins=4, history=2)
    losses = jnp.asarray([1.0, 1.0, 3.0, 3.0, 0.0, 0.0, 4.0, 4.0])
    bins = jnp.asarray([0, 0, 1, 1, 2, 2, 3, 3])
    partial = importance.record(history, bins[:6], losses[:6])  # bin 3 still empty
    np.testing.assert_allclose(importance.bin_probabilities(partial), 0.25)
    full = importance.record(history, bins, losses)
    np.testing.assert_array_equal(full["seen"], [2, 2, 2, 2])
    expected = np.array([1.0, 3.0, 0.0, 4.0]) / 8.0 * (1 - 0.001) + 0.001 / 4
    np.testing.assert_allclose(importance.bin_probabilities(full), expected, rtol=1e-6)
    # a ring buffer: a third loss in bin 1 replaces its oldest, in batch order
    newer = importance.record(full, jnp.asarray([1, 1, 1]), jnp.asarray([5.0, 6.0, 7.0]))
    np.testing.assert_allclose(newer["losses"][1], [7.0, 6.0])
    assert int(newer["seen"][1]) == 5


def test_importance_draws_follow_the_bins_and_the_weights_keep_the_uniform_expectation():
    from diffseg_jax.diffusion import importance

    p = jnp.asarray([0.1, 0.2, 0.3, 0.4])
    t, chosen, weights = importance.draw(jax.random.PRNGKey(0), p, 200_000, num_steps=1000)
    np.testing.assert_array_equal(np.asarray(t) // 250, np.asarray(chosen))
    np.testing.assert_allclose(np.bincount(np.asarray(chosen), minlength=4) / 200_000, p, atol=0.005)
    np.testing.assert_allclose(np.asarray(weights), 1.0 / (4 * np.asarray(p)[np.asarray(chosen)]), rtol=1e-6)
    f = np.cos(np.asarray(t) / 300.0)  # any function of t: E_p[w f(t)] = E_uniform[f(t)]
    assert np.mean(np.asarray(weights) * f) == pytest.approx(
        np.mean(np.cos(np.arange(1000) / 300.0)), abs=0.01
    )
    with pytest.raises(ValueError, match="must divide"):
        importance.draw(jax.random.PRNGKey(0), jnp.full((3,), 1 / 3), 4, num_steps=1000)


def test_importance_sampling_trains_with_its_history_in_the_state_and_refuses_a_timestep_power(tmp_path):
    from diffseg_jax import train
    from diffseg_jax.checkpoint import Checkpoints
    from diffseg_jax.train_state import TrainStateWithHistory, create_train_state

    config = _smoke_16px(
        importance_sampling=True, importance_bins=10, importance_history=2, timestep_power=1.0
    )
    method = build_method(config)
    batch = _batch()
    state = create_train_state(config, method, {k: np.asarray(v[:1]) for k, v in batch.items()})
    assert isinstance(state, TrainStateWithHistory)
    step = jax.jit(lambda s, b: train.train_step(s, b, method, 0.99))
    for _ in range(3):
        state, metrics = step(state, batch)
        assert float(metrics["skipped"]) == 0.0 and "per_example" not in metrics
    history = state.timestep_history
    assert int(history["seen"].sum()) == 3 * 2  # every example's loss, in the bin of its t
    assert float(jnp.abs(history["losses"]).sum()) > 0
    checkpoints = Checkpoints(tmp_path / "checkpoints", max_to_keep=None)
    checkpoints.save(3, state)
    restored = checkpoints.restore(3, jax.tree.map(jnp.zeros_like, state))
    checkpoints.close()
    np.testing.assert_array_equal(restored.timestep_history["losses"], history["losses"])
    config.diffusion.timestep_power = 2.0
    with pytest.raises(ConfigError, match="importance_sampling"):
        build_method(config)


def _head_config(weight: float):
    config = _smoke_16px()
    config.loss.condition_head_weight = weight
    return config


def test_the_condition_head_adds_its_weighted_dice_and_bce_and_off_builds_no_head():
    batch = _batch()
    key, init_key = jax.random.PRNGKey(1), jax.random.PRNGKey(0)
    off, on = build_method(_head_config(0.0)), build_method(_head_config(0.5))
    params_off, params_on = off.init(init_key, batch), on.init(init_key, batch)
    assert "image_head" not in params_off and "image_head" in params_on
    shared = {k: v for k, v in params_on.items() if k != "image_head"}
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), shared, params_off))

    model = DualEncoderNet(**unet_kwargs(_head_config(0.5)), condition_head=True)
    x_t = jnp.zeros_like(batch["label"])
    _, state = model.apply({"params": params_on}, x_t, jnp.zeros(2, jnp.int32), batch["image"], mutable=True)
    (logits,) = state["intermediates"]["condition_logits"]
    prob, label = np.asarray(jax.nn.sigmoid(logits), np.float64), np.asarray(batch["label"], np.float64)
    dice = 1 - (2 * (prob * label).sum(axis=(1, 2)) + 1) / (
        prob.sum(axis=(1, 2)) + label.sum(axis=(1, 2)) + 1
    )
    z = np.asarray(logits, np.float64)
    bce = np.maximum(z, 0) - z * label + np.log1p(np.exp(-np.abs(z)))
    by_hand = 0.5 * (dice.mean(axis=1).mean() + bce.mean())

    total_off, _ = jax.jit(off.loss)(params_off, batch, key)
    total_on, metrics = jax.jit(on.loss)(params_on, batch, key)
    assert float(total_on) - float(total_off) == pytest.approx(by_hand, rel=1e-4)
    assert float(metrics["condition_dice_loss"]) == pytest.approx(dice.mean(), rel=1e-4)
    out = on.predict(params_on, batch["image"], key)  # sampling does not use the head
    assert out["prob"].shape == batch["label"].shape


def test_the_condition_head_learns_the_mask_from_the_images():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(4, 16, 16, 4)).astype(np.float32)
    batch = {"image": jnp.asarray(image), "label": jnp.asarray(image[..., :3] > 0.5, jnp.float32)}
    method = build_method(_head_config(1.0))
    params = method.init(jax.random.PRNGKey(0), batch)
    optimiser = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, key):
        (_, metrics), grads = jax.value_and_grad(method.loss, has_aux=True)(params, batch, key)
        updates, opt_state = optimiser.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, metrics["condition_dice_loss"]

    opt_state, losses = optimiser.init(params), []
    for i in range(40):
        params, opt_state, head_loss = step(params, opt_state, jax.random.PRNGKey(i))
        losses.append(float(head_loss))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_condition_head_levels_out_of_range_is_one_config_error():
    config = _head_config(1.0)
    config.loss.condition_head_levels = len(config.model.multipliers) + 1
    with pytest.raises(ConfigError, match="loss.condition_head_levels"):
        build_method(config)


def test_medsegdiff_v2_refuses_the_condition_head():
    config = medsegdiff_v2.get_config("smoke")
    config.loss.condition_head_weight = 1.0
    with pytest.raises(ConfigError, match="condition_head_weight"):
        build_method(config)


def test_the_condition_head_sums_the_chosen_levels_1x1_logits_at_full_size():
    rng = np.random.default_rng(0)
    features = [
        jnp.asarray(rng.normal(size=(2, 16 // 2**i, 16 // 2**i, 4 * 2**i)), jnp.float32) for i in range(3)
    ]
    for coarsest, used in ((0, [0, 1, 2]), (1, [2]), (2, [1, 2])):
        head = ConditionHead(3, coarsest)
        params = head.init(jax.random.PRNGKey(0), features)["params"]
        assert len(params) == len(used)
        want = np.zeros((2, 16, 16, 3))
        for conv, level in zip(sorted(params), used, strict=True):
            kernel, bias = params[conv]["kernel"][0, 0], params[conv]["bias"]
            coarse = features[level] @ kernel + bias
            want += np.asarray(jax.image.resize(coarse, (2, 16, 16, 3), "bilinear"))
        np.testing.assert_allclose(
            np.asarray(head.apply({"params": params}, features)), want, rtol=1e-5, atol=1e-5
        )


def test_recycling_with_eps_prediction_is_refused_in_one_line():
    from diffseg_jax.config_defaults import ConfigError

    config = _smoke_16px(recycling="xt", parameterization="eps")
    with pytest.raises(ConfigError, match=r"recycling needs diffusion.parameterization='x0'") as err:
        build_method(config)
    assert "\n" not in str(err.value)
    build_method(_smoke_16px(recycling="", parameterization="eps"))  # eps alone is fine
