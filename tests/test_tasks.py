"""The task layer: every config declares a known task; every method's predict returns what its task says."""

import importlib
import pathlib

import jax
import jax.numpy as jnp
import pytest

from diffseg_jax import tasks
from diffseg_jax.config_defaults import ConfigError, base_config
from diffseg_jax.methods.registry import available_methods, build_method

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


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
