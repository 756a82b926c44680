"""The PyTorch twins of bench/torch_twins.py are the Flax networks: same parameter count, same outputs,
losses, gradients and train-step updates (on Flax's weights). torch comes with the `test` extra."""

from __future__ import annotations

import functools
import importlib
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from diffseg_jax.diffusion import process
from diffseg_jax.methods.registry import build_method

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import torch_twin_training  # noqa: E402
import torch_twins  # noqa: E402

METHODS = ("unet_baseline", "btsegdiff")


def _config(method: str, preset: str):
    return importlib.import_module(f"configs.{method}").get_config(preset)


def _batch(config, batch_size: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    size = config.data.image_size
    return {
        "image": rng.normal(size=(batch_size, size, size, 4)).astype(np.float32),
        "label": (rng.random((batch_size, size, size, 3)) > 0.8).astype(np.float32),
    }


def _nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x, np.float32).transpose(0, 3, 1, 2).copy())


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().transpose(0, 2, 3, 1)


def _init(config, batch):
    return build_method(config).init(jax.random.PRNGKey(0), {k: v[:1] for k, v in batch.items()})


def _randomised(params, scale: float = 0.1):
    """Init plus noise: Flax zero-initialises the last conv of each ResBlock and the attention output,
    which would leave those paths untested."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree.unflatten(
        treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


def _twin(config, params):
    twin = torch_twins.build_twin(config)
    torch_twins.load_flax_params(twin, params)
    return twin


def _flax_forward(config, params, batch, t):
    model = torch_twins.flax_network(config)
    if config.method == "unet_baseline":
        return np.asarray(model.apply({"params": params}, batch["image"]))
    return np.asarray(model.apply({"params": params}, batch["label"] * 2 - 1, t, batch["image"]))


def _twin_forward(twin, config, batch, t):
    if config.method == "unet_baseline":
        return _nhwc(twin(_nchw(batch["image"])))
    return _nhwc(
        twin(_nchw(batch["label"] * 2 - 1), torch.from_numpy(np.asarray(t)).long(), _nchw(batch["image"]))
    )


@pytest.mark.parametrize("method", METHODS)
def test_parameter_count_and_output_shape_match_flax_at_default_preset(method):
    config = _config(method, "")
    batch = _batch(config)
    # Shapes only: the count and the output shape need no initialised values (nor a compile).
    params = jax.eval_shape(lambda: _init(config, batch))
    twin = torch_twins.build_twin(config)
    assert torch_twins.parameter_count(twin) == sum(x.size for x in jax.tree.leaves(params))
    t = np.array([0, 999], np.int32)
    model = torch_twins.flax_network(config)
    if method == "unet_baseline":
        flax_shape = jax.eval_shape(model.apply, {"params": params}, batch["image"]).shape
    else:
        flax_shape = jax.eval_shape(model.apply, {"params": params}, batch["label"], t, batch["image"]).shape
    with torch.no_grad():
        assert _twin_forward(twin, config, batch, t).shape == flax_shape


@pytest.mark.parametrize("method", METHODS)
def test_forward_matches_flax_on_flax_weights(method):
    config = _config(method, "smoke")
    batch = _batch(config)
    params = _randomised(_init(config, batch))
    t = np.array([3, 900], np.int32)
    expected = _flax_forward(config, params, batch, t)
    with torch.no_grad():
        got = _twin_forward(_twin(config, params), config, batch, t)
    assert np.max(np.abs(got - expected)) < 1e-4 * max(1.0, np.max(np.abs(expected)))


def test_load_flax_params_rejects_a_tree_of_another_shape():
    small, default = _config("unet_baseline", "smoke"), _config("unet_baseline", "")
    with pytest.raises(ValueError):
        torch_twins.load_flax_params(torch_twins.build_twin(default), _init(small, _batch(small)))


@pytest.mark.parametrize("method", METHODS)
def test_loss_and_gradients_match_flax(method):
    config = _config(method, "smoke")
    if method == "btsegdiff":
        config.diffusion.timestep_power = 2.0  # the default preset's sampling of t
    batch = _batch(config)
    params = _randomised(_init(config, batch), 0.05)
    key = jax.random.PRNGKey(3)
    jax_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    (loss, _), grads = jax.value_and_grad(build_method(config).loss, has_aux=True)(params, jax_batch, key)

    twin = _twin(config, params)
    loss_fn = torch_twin_training.build_loss(config, twin)
    torch_batch = {k: _nchw(v) for k, v in batch.items()}
    if method == "btsegdiff":  # the draws conditional_diffusion.loss makes from its key
        t_key, noise_key, _ = jax.random.split(key, 3)
        t = process.sample_timesteps(t_key, 2, config.diffusion.num_steps, config.diffusion.timestep_power)
        noise = jax.random.normal(noise_key, batch["label"].shape)
        got, _ = loss_fn.terms(torch_batch, torch.from_numpy(np.array(t)).long(), _nchw(noise))
    else:
        got, _ = loss_fn(torch_batch)
    got.backward()
    assert float(got.detach()) == pytest.approx(float(loss), rel=1e-4)

    flax_grads = torch_twins.build_twin(config)  # the Flax gradients in the twin's layout
    torch_twins.load_flax_params(flax_grads, grads)
    for p, g in zip(twin.parameters(), flax_grads.parameters(), strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-3, atol=1e-5)


def test_trainer_steps_match_the_jax_train_step():
    """Two steps of the U-Net baseline (deterministic loss): the first at learning rate 0 (warmup),
    the second a real AdamW step; parameters and EMA agree with diffseg_jax.train.train_step's.

    16 base features: at 8, GroupNorm groups are single channels after some convolutions, whose biases
    then have an analytically zero gradient; Adam turns its rounding noise (~1e-9) into steps of the
    learning rate's size in either framework, which says nothing about the twins."""
    from diffseg_jax import train
    from diffseg_jax.train_state import create_train_state

    config = _config("unet_baseline", "smoke")
    config.model.base_features = 16
    method = build_method(config)
    batch = _batch(config, batch_size=4)
    state = create_train_state(config, method, {k: v[:1] for k, v in batch.items()})
    twin = _twin(config, state.params)
    trainer = torch_twin_training.TorchTrainer(twin, torch_twin_training.build_loss(config, twin), config)
    step = jax.jit(functools.partial(train.train_step, method=method, ema_max_decay=config.train.ema_decay))
    torch_batch = {k: _nchw(v) for k, v in batch.items()}
    for _ in range(2):
        state, metrics = step(state, {k: jnp.asarray(v) for k, v in batch.items()})
        record = trainer.step(torch_batch)
        assert record["loss"] == pytest.approx(float(metrics["loss"]), rel=1e-4)
    for tree, values in ((state.params, twin.parameters()), (state.ema_params, trainer.ema)):
        expected = torch_twins.build_twin(config)
        torch_twins.load_flax_params(expected, tree)
        for got, want in zip(values, expected.parameters(), strict=True):
            assert torch.allclose(got, want, atol=2e-6)


def test_learning_rate_matches_the_optax_schedule():
    from diffseg_jax.train_state import learning_rate_schedule

    for preset in ("smoke", "", "paper"):
        config = _config("btsegdiff", preset)
        schedule = learning_rate_schedule(config)
        for step in (0, 1, 10, 49, 50, 51, 800, config.train.steps - 1, config.train.steps + 5):
            expected = pytest.approx(float(schedule(step)), rel=1e-5)
            assert torch_twin_training.learning_rate(config, step) == expected
