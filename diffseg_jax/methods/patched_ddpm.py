"""pDDPM, mDDPM and UMA-DDPM: patch-wise noising, reconstruct the patch from its clean surroundings.

- pDDPM (Behrendt et al., MIDL 2023): x0-prediction, cosine schedule; training noises one patch of a grid
  (the rest stays clean) and the L1 loss covers that patch; at test every grid patch in turn is noised to
  `anomaly.test_step` and predicted in one step (`reconstruction.patchwise_reconstruct`).
- mDDPM (Iqbal et al.): pDDPM whose input also has a random box showing only a low- or high-pass version of
  the image (masked image + frequency modelling); the loss covers the patch and the box.
- UMA-DDPM (Zhao et al. 2026): the masking module (keep the high frequencies, hide random patches) on a
  fraction of each batch (`anomaly.uma_mask_fraction`: 1 = every example, the paper; the CPU demo masks half,
  so the network also sees the plain image it meets at test), patch noising, the MAM in the bottleneck
  (`model.modality_aware`), and the dual-domain loss l = alpha l_freq + beta l_pixel. The network outputs the
  reconstruction X_rec and an amplitude spectrum A_rec; with A_0 = |F(X_0)|, A_img = |F(X_rec)| and
  X_freq = F^-1(A_rec e^{i phase(F(X_rec))}) (A_rec paired with the phase of the network's own
  reconstruction, `reconstruction.image_from_amplitude`):
  l_freq = ||A_0 - A_img||_1 + ||A_0 - A_rec||_1 and l_pixel = ||X_0 - X_freq||_1 + ||X_0 - X_rec||_1.
  The amplitude terms cover the whole spectrum, the pixel terms the whole image (the masking changes all of
  it). The test reconstruction is X_rec, from the input `anomaly.test_input` names. Without
  `anomaly.dual_loss` there is no A_rec head and the loss is
  ||X_0 - X_rec||_1 (the ablation rows "masking only" and "+ MAM").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from diffseg_jax.diffusion import masks, process
from diffseg_jax.diffusion.schedules import make_schedule
from diffseg_jax.methods.base import Method, model_apply
from diffseg_jax.methods.reconstruction import (
    fft_amplitude,
    image_from_amplitude,
    init_inputs,
    masked_l1,
    patchwise_reconstruct,
    reconstruction_unet,
    to_signed,
    to_unit,
)

CORRUPTIONS = ("none", "mddpm", "uma")
# What UMA-DDPM's network is given at test (the paper leaves it open): the image as it is, its high-pass
# view (the deterministic half of the training masking), or the training masking itself (one random draw).
TEST_INPUTS = ("plain", "high_frequency", "masked")


def test_input(config: ml_collections.ConfigDict, key: jax.Array, images: jnp.ndarray) -> jnp.ndarray:
    """The test-time input in [0, 1] per `anomaly.test_input` (UMA-DDPM only; the others see the image)."""
    a = config.anomaly
    reading = a.get("test_input", "plain")
    if reading not in TEST_INPUTS:
        raise ValueError(f"unknown anomaly.test_input {reading!r}; expected one of {TEST_INPUTS}")
    if a.corruption != "uma" or reading == "plain":
        return images
    if reading == "high_frequency":
        return masks.frequency_filter(images, a.uma_half_width, keep="high")
    masked = masks.uma_masking(key, images, half_width=a.uma_half_width, patch=a.uma_patch, ratio=a.uma_ratio)
    return masked.image


def corrupt(config: ml_collections.ConfigDict, key: jax.Array, images: jnp.ndarray):
    """(corrupted images in [0, 1], [B, H, W, 1] region the loss must also cover) per `anomaly.corruption`."""
    a = config.anomaly
    whole = jnp.ones(images.shape[:3] + (1,), bool)
    if a.corruption == "none":
        return images, jnp.zeros_like(whole)
    if a.corruption == "mddpm":
        box = masks.mddpm_box_corruption(key, images, half_width_range=tuple(a.mddpm_half_width_range))
        return box.image, box.mask
    mask_key, view_key = jax.random.split(key)
    masked = masks.uma_masking(
        mask_key, images, half_width=a.uma_half_width, patch=a.uma_patch, ratio=a.uma_ratio
    )
    fraction = a.get("uma_mask_fraction", 0.5)
    use = jax.random.bernoulli(view_key, fraction, images.shape[:1])[:, None, None, None]
    return jnp.where(use, masked.image, images), whole


def build(config: ml_collections.ConfigDict) -> Method:
    a, d = config.anomaly, config.diffusion
    if a.corruption not in CORRUPTIONS:
        raise ValueError(f"unknown anomaly.corruption {a.corruption!r}; expected one of {CORRUPTIONS}")
    model = reconstruction_unet(config, time_conditioned=True, amplitude_head=a.dual_loss)
    apply = model_apply(model, config)
    schedule = make_schedule(d.schedule, d.num_steps)

    def init(key, batch):
        return model.init(key, *init_inputs(batch))["params"]

    def loss(params, batch, key):
        t_key, noise_key, patch_key, corrupt_key, dropout_key = jax.random.split(key, 5)
        images = batch["image"]
        b, h, w, _ = images.shape
        x0 = to_signed(images)
        corrupted, region = corrupt(config, corrupt_key, images)
        x_in = to_signed(corrupted)
        t = process.sample_timesteps(t_key, b, d.num_steps)
        patch = masks.random_patch_mask(patch_key, b, h, w, a.patch_size, a.patch_stride)
        x_t = process.q_sample(schedule, x_in, t, jax.random.normal(noise_key, x0.shape))
        x_in = jnp.where(patch, x_t, x_in)
        out = apply({"params": params}, x_in, t, train=True, rngs={"dropout": dropout_key})
        covered = patch | region
        if not a.dual_loss:
            pixel = masked_l1(out, x0, covered)
            return pixel, {"l_pixel": pixel}
        x_rec, a_rec = jnp.split(out, 2, axis=-1)
        a_0 = fft_amplitude(x0)
        terms = {
            "l_freq_img": jnp.mean(jnp.abs(a_0 - fft_amplitude(x_rec))),
            "l_freq_rec": jnp.mean(jnp.abs(a_0 - a_rec)),
            "l_pixel_freq": masked_l1(image_from_amplitude(a_rec, x_rec), x0, covered),
            "l_pixel_rec": masked_l1(x_rec, x0, covered),
        }
        freq = terms["l_freq_img"] + terms["l_freq_rec"]
        pixel = terms["l_pixel_freq"] + terms["l_pixel_rec"]
        metrics = {"l_freq": freq, "l_pixel": pixel, **terms}
        return a.freq_weight * freq + a.pixel_weight * pixel, metrics

    def predict(params, images, key):
        input_key, key = jax.random.split(key)
        x = to_signed(test_input(config, input_key, images))
        t = jnp.full(x.shape[:1], a.test_step, jnp.int32)

        def noised(x, noise):
            return process.q_sample(schedule, x, t, noise)

        def x0_fn(x_in, mask):
            del mask
            return apply({"params": params}, x_in, t)[..., : x.shape[-1]]  # X_rec (A_rec dropped)

        noise = jax.random.normal(key, x.shape)
        recon = patchwise_reconstruct(x0_fn, x, noise, noised, a.patch_size, a.patch_stride)
        return {"reconstruction": to_unit(recon)}

    return Method(config.method, init, loss, predict)
