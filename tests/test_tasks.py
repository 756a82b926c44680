"""The task layer: every config declares a known task; every method's predict returns what its task says."""

import importlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax import tasks
from diffseg_jax.config_defaults import ConfigError, base_config
from diffseg_jax.methods.registry import available_methods, build_method

CONFIG_FILES = (pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py")
CONFIGS = sorted(p.stem for p in CONFIG_FILES if p.stem != "__init__")


def _smoke(name: str):
    return importlib.import_module(f"configs.{name}").get_config("smoke")


def test_task_is_a_declared_field_and_unknown_names_are_one_line():
    assert base_config("smoke").task == "segmentation"
    with pytest.raises(ConfigError) as err:
        tasks.get_task("segmentaton")
    message = str(err.value)
    assert "\n" not in message and "'segmentaton'" in message
    assert all(name in message for name in ("anomaly", "segmentation", "synthesis"))


def test_selection_scores_are_named_for_what_they_measure():
    assert tasks.get_task("segmentation").selection == "val/dice"
    assert tasks.get_task("anomaly").selection == "val/dice"  # the detection Dice of the anomaly maps
    assert tasks.get_task("synthesis").selection == "val/psnr"
    assert tasks.get_task("synthesis").selection_label == "val_psnr"


def test_every_registered_method_has_a_config():
    methods = {_smoke(name).method for name in CONFIGS}
    assert methods == set(available_methods())


@pytest.mark.parametrize("name", CONFIGS)
def test_predict_returns_what_the_task_declares(name):
    """Abstract evaluation (no compilation): keys, shapes and dtypes of predict against the declaration."""
    config = _smoke(name)
    task = tasks.get_task(config)
    method = build_method(config)
    batch = {k: jnp.asarray(v) for k, v in task.example_batch(config).items()}
    batch = {k: jnp.repeat(v, 2, axis=0) for k, v in batch.items()}
    key = jax.random.PRNGKey(0)
    params = jax.eval_shape(method.init, key, batch)
    out = jax.eval_shape(method.predict, params, batch["image"], key)
    assert set(out) == set(task.predict_outputs), (config.method, set(out))
    b, h, w, m = batch["image"].shape
    channels = {"prob": batch["label"].shape[-1], "uncertainty": batch["label"].shape[-1]}
    channels |= {"reconstruction": m, "synthesis": m}
    for key_name, value in out.items():
        assert value.shape == (b, h, w, channels[key_name]), (config.method, key_name, value.shape)
        assert value.dtype == jnp.float32


def test_flip_augmentation_averages_flipped_back_predictions_and_its_entropy_is_the_uncertainty():
    from diffseg_jax import parallel
    from diffseg_jax.tasks.segmentation import predict_with_flips

    mesh = parallel.make_mesh()
    images = np.random.default_rng(0).normal(size=(4, 8, 8, 4)).astype(np.float32)

    def equivariant(params, batch, key):  # depends on the pixel only: flips change nothing
        prob = (batch[..., :1] > 0).astype(jnp.float32)
        return {"prob": prob, "uncertainty": jnp.zeros_like(prob)}

    def left_half(params, batch, key):  # "tumour" in the left half whatever the image: flips expose it
        prob = jnp.broadcast_to(
            (jnp.arange(8) < 4).astype(jnp.float32)[None, None, :, None], batch.shape[:3] + (1,)
        )
        return {"prob": prob, "uncertainty": jnp.zeros_like(prob)}

    out = predict_with_flips(equivariant, None, images, jax.random.PRNGKey(0), mesh, {"batch_size": 4})
    np.testing.assert_array_equal(out["prob"], (images[..., :1] > 0).astype(np.float32))
    assert np.abs(out["uncertainty"]).max() < 1e-4  # certain: every flip agrees
    out = predict_with_flips(left_half, None, images, jax.random.PRNGKey(0), mesh, {"batch_size": 4})
    np.testing.assert_allclose(out["prob"], 0.5)  # two flips say left, two say right
    np.testing.assert_allclose(out["uncertainty"], 1.0, atol=1e-5)  # one bit: as uncertain as can be


def test_concurrent_slice_batches_give_the_sequential_result_in_order():
    from diffseg_jax import inference, parallel

    mesh = parallel.make_mesh()
    images = np.random.default_rng(0).normal(size=(11, 4, 4, 2)).astype(np.float32)

    @jax.jit
    def noisy(params, batch, key):  # depends on the slice and on the batch's own key
        return {"prob": batch[..., :1] + jax.random.normal(key, batch.shape[:3] + (1,))}

    key = jax.random.PRNGKey(3)
    one = inference.predict_slices(noisy, None, images, key, mesh, batch_size=4)
    three = inference.predict_slices(noisy, None, images, key, mesh, batch_size=4, concurrent=3)
    assert one["prob"].shape == (11, 4, 4, 1)
    np.testing.assert_array_equal(one["prob"], three["prob"])
    for i in range(3):  # batch i got key fold_in(key, i): the padded last batch is dropped
        part = images[4 * i : 4 * i + 4]
        noise = jax.random.normal(jax.random.fold_in(key, i), (4, 4, 4, 1))[: len(part)]
        np.testing.assert_allclose(one["prob"][4 * i : 4 * i + 4], part[..., :1] + noise, atol=1e-6)
    with pytest.raises(ValueError, match="concurrent_batches=0"):
        inference.predict_slices(noisy, None, images, key, mesh, batch_size=4, concurrent=0)
