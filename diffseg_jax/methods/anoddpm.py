"""AnoDDPM (Wyatt et al., CVPR-W 2022): partial diffusion with simplex noise and back.

A DDPM (eps-prediction, linear betas) trained on healthy slices with simplex noise in place of Gaussian
noise: low-frequency, blob-like noise that can hide a whole lesion, so the denoised image is a healthy
version. At test each slice is noised to step `anomaly.start_step` (lambda ~ 250 of 1000) and denoised back
(DDIM `sampling.num_steps` steps, or the full DDPM chain with 'ddpm'); the anomaly map is the squared error.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from diffseg_jax.diffusion import process, samplers
from diffseg_jax.diffusion.schedules import make_schedule
from diffseg_jax.diffusion.simplex import simplex_noise
from diffseg_jax.methods.base import Method, model_apply
from diffseg_jax.methods.reconstruction import init_inputs, reconstruction_unet, to_signed, to_unit


def build(config: ml_collections.ConfigDict) -> Method:
    model = reconstruction_unet(config, time_conditioned=True)
    apply = model_apply(model, config)
    d, a, s = config.diffusion, config.anomaly, config.sampling
    schedule = make_schedule(d.schedule, d.num_steps)

    def noise_like(key, x):
        if a.noise == "gaussian":
            return jax.random.normal(key, x.shape, x.dtype)
        return simplex_noise(key, x.shape, a.simplex_octaves, a.simplex_persistence, a.simplex_frequency)

    def init(key, batch):
        return model.init(key, *init_inputs(batch))["params"]

    def loss(params, batch, key):
        t_key, noise_key, dropout_key = jax.random.split(key, 3)
        x0 = to_signed(batch["image"])
        t = process.sample_timesteps(t_key, x0.shape[0], d.num_steps)
        noise = noise_like(noise_key, x0)
        x_t = process.q_sample(schedule, x0, t, noise)
        eps_hat = apply({"params": params}, x_t, t, train=True, rngs={"dropout": dropout_key})
        mse = jnp.mean((eps_hat - noise) ** 2)
        return mse, {"noise_mse": mse}

    def predict(params, images, key):
        noise_key, chain_key = jax.random.split(key)
        x0 = to_signed(images)
        start = jnp.full(x0.shape[:1], a.start_step, jnp.int32)
        x_start = process.q_sample(schedule, x0, start, noise_like(noise_key, x0))

        def denoise(x_t, t):
            return apply({"params": params}, x_t, jnp.full(x_t.shape[:1], t, jnp.int32))

        x0_hat = samplers.sample_from(
            denoise,
            schedule,
            "eps",
            x_start,
            a.start_step,
            chain_key,
            method=s.method,
            num_steps=s.num_steps,
        )
        return {"reconstruction": to_unit(x0_hat)}

    return Method("anoddpm", init, loss, predict)
