"""M2DN (IEEE TMI 2024): synthesise the missing MRI sequences by diffusing only them.

All sequences form one 4-channel image M. A random availability pattern per example (never all-missing or
all-present) marks the missing channels; only those are noised, the available ones stay clean and act as
the condition. The network sees M_t, t and the missing code v and predicts x0 of all sequences; loss
||M - f(M_t, t, v)||^2 over every channel (as the paper; `mse_missing` is the part that matters).

Batches are the segmentation batches; the label is ignored. Images are z-scores clipped at +-5
(`data_pipelines.slices._CLIP`), so x0 estimates are clipped to `diffusion.x0_clip` (5) while sampling.
predict reads the pattern from the input (an all-zero channel is missing, `modalities.py`) and returns
{"synthesis": [B,H,W,4]}: the input's channels where available, the synthesised ones where missing.

`synthesis_unet` (config.method) is the deterministic baseline M2DN is compared with: the same
network and code, the missing channels given as zeros at t = 0, one forward pass, the same MSE.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffseg_jax import modalities
from diffseg_jax.diffusion import process, samplers
from diffseg_jax.diffusion.schedules import Schedule, make_schedule
from diffseg_jax.methods.base import Method, model_apply, unet_kwargs
from diffseg_jax.models.m2dn import M2DNNet


def noised_input(
    x0: jnp.ndarray, missing: jnp.ndarray, t: jnp.ndarray, noise: jnp.ndarray, schedule: Schedule
) -> jnp.ndarray:
    """M_t: q_sample on the missing channels ([B, M] bool/0-1), the clean x0 on the available ones."""
    x_t = process.q_sample(schedule, x0, t, noise)
    return jnp.where(missing.astype(bool)[:, None, None, :], x_t, x0)


def draw_missing(key: jax.Array, batch: int) -> jnp.ndarray:
    """[B, M] bool, 1 = missing: a uniform non-empty proper subset per example (never none, never all)."""
    return ~modalities.random_availability(key, batch, proper=True)


def synthesize(
    denoise,
    schedule: Schedule,
    images: jnp.ndarray,
    missing: jnp.ndarray,
    key: jax.Array,
    *,
    method: str = "ddim",
    num_steps: int | None = 10,
    eta: float = 0.0,
    clip: float = 5.0,
) -> jnp.ndarray:
    """Reverse chain over the missing channels; the available ones are reset to the input at every step.

    `denoise(m_t, t [B]) -> x0 estimate`. DDIM (K steps) or DDPM (every step), one `lax.scan`.
    """
    steps = samplers.visited_steps(schedule, method, num_steps)
    prev = np.concatenate([steps[1:], np.array([-1], np.int32)])
    init_key, loop_key = jax.random.split(key)
    hole = missing.astype(bool)[:, None, None, :]
    x_init = jnp.where(hole, jax.random.normal(init_key, images.shape, jnp.float32), images)
    batch = images.shape[0]

    def body(x_t, xs):
        t, t_prev, step_key = xs
        x0 = jnp.clip(denoise(x_t, jnp.full((batch,), t, jnp.int32)), -clip, clip)
        if method == "ddpm":
            x_next = samplers.ddpm_step(schedule, x0, x_t, t, step_key)
        else:
            eps = process.eps_from_x0(schedule, x_t, t, x0)
            x_next = samplers.ddim_step(schedule, x0, eps, t, t_prev, step_key, eta)
        return jnp.where(hole, x_next, images), None

    xs = (jnp.asarray(steps), jnp.asarray(prev), jax.random.split(loop_key, len(steps)))
    x_final, _ = jax.lax.scan(body, x_init, xs)
    return x_final  # the last step (t_prev = -1) returns its x0 estimate on the missing channels


def build(config: ml_collections.ConfigDict) -> Method:
    if config.method == "synthesis_unet":
        return _build_regressor(config)
    d, s = config.diffusion, config.sampling
    if d.parameterization != "x0":
        raise ValueError(f"m2dn predicts x0 (diffusion.parameterization='x0'), got {d.parameterization!r}")
    schedule = make_schedule(d.schedule, d.num_steps)
    samplers.visited_steps(schedule, s.method, s.num_steps)  # an unknown sampler fails here, in one line
    model, apply, init = _network(config)

    def loss(params, batch, key):
        avail_key, t_key, noise_key, dropout_key = jax.random.split(key, 4)
        x0 = batch["image"]
        b = x0.shape[0]
        missing = draw_missing(avail_key, b)
        t = process.sample_timesteps(t_key, b, d.num_steps, d.get("timestep_power", 1.0))
        m_t = noised_input(x0, missing, t, jax.random.normal(noise_key, x0.shape), schedule)
        x0_hat = apply(
            {"params": params}, m_t, t, missing.astype(jnp.float32), train=True, rngs={"dropout": dropout_key}
        )
        return _mse_terms(x0_hat, x0, missing)

    def predict(params, images, key):
        missing = ~modalities.available_from_image(images)
        code = missing.astype(jnp.float32)

        def denoise(m_t, t):
            return apply({"params": params}, m_t, t, code)

        def run(_):
            return synthesize(
                denoise,
                schedule,
                images,
                missing,
                key,
                method=s.method,
                num_steps=s.num_steps,
                eta=s.eta,
                clip=d.get("x0_clip", 5.0),
            )

        # Nothing missing in the whole batch: the input is the answer (skips the chain).
        out = jax.lax.cond(jnp.any(missing), run, lambda _: images, None)
        return {"synthesis": out}

    return Method("m2dn", init, loss, predict)


def _network(config: ml_collections.ConfigDict):
    """(model, apply, init) of the M2DN network, shared by the diffusion model and the regressor."""
    num_seq = len(modalities.MODALITIES)
    model = M2DNNet(
        **{**unet_kwargs(config), "out_channels": num_seq}, stem_features=config.model.get("stem_features", 0)
    )

    def init(key, batch):
        image = batch["image"]
        b = image.shape[0]
        return model.init(key, image, jnp.zeros((b,), jnp.int32), jnp.ones((b, num_seq)))["params"]

    return model, model_apply(model, config), init


def _mse_terms(x0_hat: jnp.ndarray, x0: jnp.ndarray, missing: jnp.ndarray):
    """MSE over every channel (the loss), and its missing / available parts (what matters / the check)."""
    sq = (x0_hat - x0) ** 2
    per_channel = jnp.mean(sq, axis=(1, 2))  # [B, M]
    weight = missing.astype(per_channel.dtype)
    mse_missing = jnp.sum(per_channel * weight) / jnp.sum(weight)  # >= 1 missing per example
    mse_available = jnp.sum(per_channel * (1 - weight)) / jnp.maximum(jnp.sum(1 - weight), 1.0)
    total = jnp.mean(sq)
    return total, {"mse": total, "mse_missing": mse_missing, "mse_available": mse_available}


def _build_regressor(config: ml_collections.ConfigDict) -> Method:
    """Deterministic U-Net regressor: zeros for the missing channels, t = 0, x0 of all sequences."""
    _, apply, init = _network(config)

    def forward(params, images, missing, train=False, rngs=None):
        zeros_t = jnp.zeros(images.shape[:1], jnp.int32)
        given = jnp.where(missing[:, None, None, :], 0.0, images)
        return apply({"params": params}, given, zeros_t, missing.astype(jnp.float32), train=train, rngs=rngs)

    def loss(params, batch, key):
        avail_key, dropout_key = jax.random.split(key)
        x0 = batch["image"]
        missing = draw_missing(avail_key, x0.shape[0])
        x0_hat = forward(params, x0, missing, train=True, rngs={"dropout": dropout_key})
        return _mse_terms(x0_hat, x0, missing)

    def predict(params, images, key):
        del key
        missing = ~modalities.available_from_image(images)
        out = forward(params, images, missing)
        clip = config.diffusion.get("x0_clip", 5.0)
        return {"synthesis": jnp.where(missing[:, None, None, :], jnp.clip(out, -clip, clip), images)}

    return Method("synthesis_unet", init, loss, predict)
