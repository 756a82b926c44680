"""The train state and how it is made: parameters, EMA parameters, optimiser state, step and RNG.

Shared by training (which updates it) and checkpoint restoring (which needs its structure, not its values),
so evaluation can rebuild the restore target without importing the training loop.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from diffseg_jax.diffusion import importance
from diffseg_jax.methods.base import Method


class TrainState(flax.struct.PyTreeNode):
    step: jnp.ndarray
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jnp.ndarray
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


class TrainStateWithHistory(TrainState):
    """With importance-sampled timesteps (`diffusion.importance_sampling`): their loss history too.

    A separate class, so runs without it keep the checkpoint structure they always had.
    """

    timestep_history: Any = None


def timestep_history(config: ml_collections.ConfigDict) -> importance.History | None:
    """The empty loss history when `config.diffusion.importance_sampling` is on, else None."""
    d = config.get("diffusion")
    if d is None or not d.get("importance_sampling", False):
        return None
    return importance.init_history(d.importance_bins, d.importance_history)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup to train.learning_rate, then cosine decay to 5% of it at train.steps."""
    t = config.train
    warmup = min(t.warmup_steps, max(t.steps - 1, 1))
    return optax.warmup_cosine_decay_schedule(
        0.0, t.learning_rate, warmup, max(t.steps, 2), end_value=0.05 * t.learning_rate
    )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW (or SGD) with linear warmup and cosine decay, gradients clipped by global norm."""
    t = config.train
    lr = learning_rate_schedule(config)
    if t.optimizer == "adamw":
        base = optax.adamw(lr, b1=t.adam_b1, b2=t.adam_b2, weight_decay=t.weight_decay)
    elif t.optimizer == "sgd":  # ShaSpec's recipe: SGD with Nesterov momentum
        base = optax.chain(
            optax.add_decayed_weights(t.weight_decay), optax.sgd(lr, t.momentum, nesterov=True)
        )
    else:
        raise ValueError(f"unknown train.optimizer {t.optimizer!r}; expected 'adamw' or 'sgd'")
    return optax.chain(optax.clip_by_global_norm(t.grad_clip), base)


def create_train_state(
    config: ml_collections.ConfigDict, method: Method, sample_batch: dict[str, np.ndarray]
) -> TrainState:
    init_key, state_key = jax.random.split(jax.random.PRNGKey(config.seed))
    tx = make_optimizer(config)

    @jax.jit  # like `method.init`: one program, not hundreds of eager ops compiled one by one
    def initial(key: jax.Array, batch: dict[str, jax.Array]) -> tuple[Any, Any]:
        params = method.init(key, batch)
        return params, tx.init(params)

    params, opt_state = initial(init_key, {k: jnp.asarray(v) for k, v in sample_batch.items()})
    fields = dict(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.jit(lambda p: jax.tree.map(jnp.copy, p))(params),  # distinct buffers: both donated
        opt_state=opt_state,
        rng=state_key,
        tx=tx,
    )
    history = timestep_history(config)
    if history is None:
        return TrainState(**fields)
    return TrainStateWithHistory(**fields, timestep_history=history)


def ema_decay(step: jnp.ndarray, max_decay: float) -> jnp.ndarray:
    """Warmed-up EMA decay min(max_decay, (1 + step) / (10 + step)): early params are not frozen in."""
    step = step.astype(jnp.float32)
    return jnp.minimum(max_decay, (1.0 + step) / (10.0 + step))
