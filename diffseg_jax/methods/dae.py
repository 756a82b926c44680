"""DAE (Kascenas et al., MIDL 2022): a denoising autoencoder that removes coarse noise from healthy brains.

Training adds Gaussian noise drawn at 1/`noise_scale` of the resolution and upsampled (smooth blobs, not
pixel noise: a lesion-sized corruption), inside the brain; the U-Net restores the clean image (L2). At test
it is applied to the clean input: what it cannot reproduce is the anomaly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from diffseg_jax.methods.base import Method, model_apply
from diffseg_jax.methods.reconstruction import init_inputs, reconstruction_unet


def coarse_noise(key: jax.Array, shape: tuple[int, ...], scale: int, std: float) -> jnp.ndarray:
    """N(0, std^2) at [H/scale, W/scale], bilinearly upsampled to [H, W]."""
    b, h, w, c = shape
    low = jax.random.normal(key, (b, max(h // scale, 1), max(w // scale, 1), c)) * std
    return jax.image.resize(low, shape, method="bilinear")


def build(config: ml_collections.ConfigDict) -> Method:
    model = reconstruction_unet(config, time_conditioned=False)
    apply = model_apply(model, config)
    a = config.anomaly

    def init(key, batch):
        return model.init(key, init_inputs(batch)[0])["params"]

    def loss(params, batch, key):
        noise_key, dropout_key = jax.random.split(key)
        image, brain = batch["image"], batch["label"]
        noise = coarse_noise(noise_key, image.shape, a.dae_noise_scale, a.dae_noise_std) * brain
        recon = apply({"params": params}, image + noise, train=True, rngs={"dropout": dropout_key})
        mse = jnp.mean((recon - image) ** 2)
        return mse, {"mse": mse}

    def predict(params, images, key):
        del key  # deterministic
        return {"reconstruction": jnp.clip(apply({"params": params}, images), 0.0, 1.0)}

    return Method("dae", init, loss, predict)
