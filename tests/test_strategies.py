"""Training strategies of the conditional-diffusion segmenters: recycling (Fu et al., MELBA 2023)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import btsegdiff
from diffseg_jax.config_defaults import ConfigError
from diffseg_jax.methods.registry import build_method


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
