"""Importance sampling of the training timestep from the loss history (Nichol & Dhariwal 2021, sec. 3.3).

The T steps are grouped in `bins` runs of T / bins consecutive steps. Each bin keeps the training losses of
its last `history` examples; once every bin is full, a bin is drawn with probability proportional to the
root mean square of its losses (mixed with a small uniform share, so no bin is starved), and t uniformly
inside it. Until then t is uniform. Each example's loss is weighted by 1 / (bins * p(bin)), so the expected
loss is that of uniform t and only its variance changes. Bins rather than single steps: a CPU budget of
1,600 steps of 8 examples would not fill a history of 10 for each of 1,000 steps.

The history is a pytree of arrays carried in the train state, so it is checkpointed and resumes exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

History = dict[str, jnp.ndarray]  # "losses" [bins, history] float32, "seen" [bins] int32


def init_history(bins: int, history: int) -> History:
    if bins < 1 or history < 1:
        raise ValueError(f"importance sampling needs bins >= 1 and history >= 1, got {bins} and {history}")
    return {"losses": jnp.zeros((bins, history), jnp.float32), "seen": jnp.zeros((bins,), jnp.int32)}


def bin_probabilities(history: History, uniform_share: float = 0.001) -> jnp.ndarray:
    """[bins] probabilities: uniform until every bin holds a full history, then ~ RMS of its losses."""
    losses, seen = history["losses"], history["seen"]
    bins, length = losses.shape
    rms = jnp.sqrt(jnp.mean(losses**2, axis=1))
    weighted = rms / jnp.maximum(jnp.sum(rms), 1e-12)
    weighted = weighted * (1.0 - uniform_share) + uniform_share / bins
    return jnp.where(jnp.all(seen >= length), weighted, jnp.full((bins,), 1.0 / bins))


def _bin_width(num_steps: int, bins: int) -> int:
    if num_steps % bins:
        raise ValueError(f"diffusion.importance_bins={bins} must divide diffusion.num_steps={num_steps}")
    return num_steps // bins


def draw(
    key: jax.Array, probabilities: jnp.ndarray, batch: int, num_steps: int
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """(t [batch] int32, their bins [batch], importance weights [batch]), bins drawn by `probabilities`."""
    bins = probabilities.shape[0]
    width = _bin_width(num_steps, bins)
    bin_key, offset_key = jax.random.split(key)
    chosen = jax.random.choice(bin_key, bins, (batch,), p=probabilities)
    t = chosen * width + jax.random.randint(offset_key, (batch,), 0, width)
    return t.astype(jnp.int32), chosen, 1.0 / (bins * probabilities[chosen])


def record(history: History, chosen: jnp.ndarray, losses: jnp.ndarray) -> History:
    """The history with each example's loss written over the oldest entry of its bin (in batch order)."""
    length = history["losses"].shape[1]

    def write(h: History, example: tuple[jnp.ndarray, jnp.ndarray]) -> tuple[History, None]:
        b, loss = example
        slot = h["seen"][b] % length
        return {"losses": h["losses"].at[b, slot].set(loss), "seen": h["seen"].at[b].add(1)}, None

    losses = jax.lax.stop_gradient(losses).astype(jnp.float32)
    return jax.lax.scan(write, history, (chosen, losses))[0]
