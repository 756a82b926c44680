"""What every method provides: init, a training loss and a (jittable) prediction on a slice batch."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffseg_jax import precision, runtime

Params = Any
Batch = dict[str, jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class Method:
    """A model wired to its loss and its inference procedure.

    init(key, batch) -> params
    loss(params, batch, key) -> (scalar loss, dict of scalar metrics)      [training mode]
    predict(params, images, key) -> dict of [B, H, W, ·] arrays: the keys the method's task declares
        (`diffseg_jax/tasks/`: segmentation "prob" and "uncertainty", anomaly "reconstruction",
        synthesis "synthesis"; tests/test_tasks.py checks every method against its task)
    """

    name: str
    init: Callable[[jax.Array, Batch], Params]
    loss: Callable[[Params, Batch, jax.Array], tuple[jnp.ndarray, dict[str, jnp.ndarray]]]
    predict: Callable[[Params, jnp.ndarray, jax.Array], dict[str, jnp.ndarray]]


def num_outputs(target: str) -> int:
    """Channels of the mask: WT/TC/ET regions or WT only."""
    if target == "regions":
        return 3
    if target == "wt":
        return 1
    raise ValueError(f"unknown data.target {target!r}; expected 'regions' or 'wt'")


def unet_kwargs(config) -> dict[str, Any]:
    """The U-Net shape fields of `config.model` (shared by every U-Net-based method) plus the outputs."""
    m = config.model
    return dict(
        out_channels=num_outputs(config.data.target),
        base_features=m.base_features,
        multipliers=tuple(m.multipliers),
        num_res_blocks=m.num_res_blocks,
        attention_levels=tuple(m.attention_levels),
        dropout=m.dropout,
        remat=m.get("remat", False),
    )


def model_apply(model: nn.Module, config) -> Callable[..., Any]:
    """`model.apply` computing in `config.model.dtype` (float32 params and outputs; `precision.py`)."""
    return precision.apply_in(model.apply, runtime.compute_dtype(config.model.get("dtype", "float32")))


def soft_dice_loss(
    prob: jnp.ndarray, label: jnp.ndarray, weights: jnp.ndarray | None = None, eps: float = 1.0
) -> jnp.ndarray:
    """1 - soft Dice per channel over the batch, averaged over channels (robust to class imbalance).

    `weights` [B]: each example's pixels count that many times (importance-sampled timesteps).
    """
    axes = (0, 1, 2)
    if weights is not None:
        w = weights[:, None, None, None]
        prob, label_w = prob * w, label * w
    else:
        label_w = label
    inter = jnp.sum(prob * label, axis=axes)
    denom = jnp.sum(prob, axis=axes) + jnp.sum(label_w, axis=axes)
    return 1.0 - jnp.mean((2.0 * inter + eps) / (denom + eps))


def per_example_soft_dice_loss(prob: jnp.ndarray, label: jnp.ndarray, eps: float = 1.0) -> jnp.ndarray:
    """[B]: 1 - soft Dice of each example, averaged over channels."""
    inter = jnp.sum(prob * label, axis=(1, 2))
    denom = jnp.sum(prob, axis=(1, 2)) + jnp.sum(label, axis=(1, 2))
    return 1.0 - jnp.mean((2.0 * inter + eps) / (denom + eps), axis=-1)


def binary_entropy(prob: jnp.ndarray) -> jnp.ndarray:
    """The entropy of a region probability in bits: in [0, 1], the scale of every method's uncertainty map."""
    p = jnp.clip(prob, 1e-6, 1 - 1e-6)
    return -(p * jnp.log2(p) + (1 - p) * jnp.log2(1 - p))
