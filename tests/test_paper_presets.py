"""Every `paper` preset trains: its loss, diffusion and optimiser on its network at a tiny size.

The 300-step runs at 64 px on the CPU are in docs/results.md; this checks, within the suite's budget, that
each paper preset's loss is finite and falls on a fixed batch (a preset whose loss cannot be optimised, such
as an unclipped x0 term weighing the noise error by 12,000, would not). The network keeps the preset's
blocks per level and its method's parts (fusions, SS-Former, modality-aware module) at three levels instead
of six, with attention at the coarsest: compiling six levels took most of this file's minutes and the loss
does not depend on the depth.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffseg_jax.methods.registry import build_method
from diffseg_jax.train_state import make_optimizer

SIZE = 32


def _tiny_paper_config(name: str):
    config = importlib.import_module(f"configs.{name}").get_config("paper")
    config.model.base_features = 4  # a tiny width and depth; the paper's blocks per level
    config.model.multipliers = (1, 2, 4)
    config.model.attention_levels = (2,)
    config.data.image_size = SIZE
    if config.task == "anomaly":
        config.data.grid = (SIZE, SIZE, 8)
        config.anomaly.patch_size = config.anomaly.patch_stride = SIZE // 2
    return config


def _batch(config) -> dict[str, jnp.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = ((yy - 14) ** 2 + (xx - 17) ** 2 < 36).astype(np.float32)
    if config.task == "anomaly":
        image = 0.5 + 0.3 * disc[None, ..., None] + 0.05 * rng.standard_normal((2, SIZE, SIZE, 1))
        return {
            "image": jnp.asarray(np.clip(image, 0, 1), jnp.float32),
            "label": jnp.ones((2, SIZE, SIZE, 1)),
        }
    image = disc[None, ..., None] * np.array([0.8, 1.2, 1.0, 1.5]) + 0.1 * rng.standard_normal(
        (2, SIZE, SIZE, 4)
    )
    label = np.broadcast_to(disc[None, ..., None], (2, SIZE, SIZE, 3))
    return {"image": jnp.asarray(image, jnp.float32), "label": jnp.asarray(label, jnp.float32)}


@pytest.mark.parametrize("name", ["btsegdiff", "medsegdiff_v1", "medsegdiff_v2", "anomaly_uma_ddpm"])
def test_paper_preset_trains_with_falling_loss(name):
    config = _tiny_paper_config(name)
    config.train.learning_rate = 1e-3  # a handful of steps instead of 100k
    method = build_method(config)
    batch = _batch(config)
    params = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
    tx = make_optimizer(config)

    @jax.jit
    def step(params, opt_state, key):
        (loss, _), grads = jax.value_and_grad(method.loss, has_aux=True)(params, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    # The same key every step: the same t and noise, so the falling loss is the fit, not the draw.
    opt_state, losses = tx.init(params), []
    for _ in range(12):
        params, opt_state, loss = step(params, opt_state, jax.random.PRNGKey(1))
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    # One fixed objective, so descent shows as a steady fall: nearly every step lowers it.
    assert losses[-1] < 0.9 * losses[0], losses
    assert np.sum(np.diff(losses) < 0) >= len(losses) - 2, losses
