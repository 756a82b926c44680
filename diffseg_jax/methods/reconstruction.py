"""What the anomaly detectors share: their U-Net, the [0, 1] <-> [-1, 1] scaling, pDDPM's patch-wise test.

Anomaly methods follow the `Method` contract with two differences: training batches are
{"image": [B, H, W, 1] in [0, 1], "label": the brain mask [B, H, W, 1]} (one sequence per example; unified
mode mixes T1 and T2 examples), and `predict` returns {"reconstruction": [B, H, W, 1] in [0, 1]}: the
detection protocol (`anomaly/evaluate.py`) turns |x - x_hat| into maps and numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from diffseg_jax.diffusion.masks import patch_masks
from diffseg_jax.methods.base import unet_kwargs
from diffseg_jax.models.anomaly import ReconstructionUNet


def reconstruction_unet(
    config: ml_collections.ConfigDict, time_conditioned: bool, amplitude_head: bool = False
) -> ReconstructionUNet:
    """The shared U-Net shape (`unet_kwargs`) mapping one sequence to its reconstruction."""
    m = config.model
    return ReconstructionUNet(
        **{**unet_kwargs(config), "out_channels": 1},
        time_conditioned=time_conditioned,
        modality_aware=m.get("modality_aware", False),
        amplitude_head=amplitude_head,
        num_prompts=m.get("num_prompts", 4),
        mamba_state=m.get("mamba_state", 16),
    )


def to_signed(images: jnp.ndarray) -> jnp.ndarray:
    """Diffusion runs in [-1, 1] (the usual DDPM data range); images come in [0, 1]."""
    return 2.0 * images - 1.0


def to_unit(x: jnp.ndarray) -> jnp.ndarray:
    return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


def init_inputs(batch: dict[str, jnp.ndarray]) -> tuple[jnp.ndarray, jnp.ndarray]:
    image = batch["image"]
    return image, jnp.zeros(image.shape[:1], jnp.int32)


def masked_l1(a: jnp.ndarray, b: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Mean |a - b| over the masked pixels (per batch); the whole image when the mask is all ones."""
    mask = jnp.broadcast_to(mask, a.shape).astype(a.dtype)
    return jnp.sum(jnp.abs(a - b) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def fft_amplitude(x: jnp.ndarray) -> jnp.ndarray:
    """|F[x]| per image and channel (orthonormal, so its scale matches the pixels')."""
    return jnp.abs(jnp.fft.fft2(x.astype(jnp.float32), axes=(1, 2), norm="ortho"))


def image_from_amplitude(amplitude: jnp.ndarray, like: jnp.ndarray) -> jnp.ndarray:
    """Re F^-1[A e^{i phase(F[like])}]: an amplitude spectrum made an image with the phase of `like`.

    The phase is held fixed (no gradient), so a loss on the result trains the amplitude; where F[like] is
    zero the phase is taken as 0.
    """
    spectrum = jnp.fft.fft2(like.astype(jnp.float32), axes=(1, 2), norm="ortho")
    magnitude = jnp.abs(spectrum)
    phase = jnp.where(magnitude > 1e-12, spectrum / jnp.maximum(magnitude, 1e-12), 1.0 + 0.0j)
    phase = jax.lax.stop_gradient(phase)
    image = jnp.fft.ifft2(amplitude.astype(jnp.float32) * phase, axes=(1, 2), norm="ortho")
    return jnp.real(image).astype(like.dtype)


def patchwise_reconstruct(
    x0_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    x: jnp.ndarray,
    noise: jnp.ndarray,
    noised: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    patch: int,
    stride: int,
) -> jnp.ndarray:
    """pDDPM's test: for each grid patch, noise only that patch, predict x0, keep the patch's pixels.

    `noised(x, noise)` returns the fully noised image at the test step; x0_fn(x_in, patch_mask) the network's
    x0. Overlapping patches (stride < patch) are averaged.
    """
    masks = jnp.asarray(patch_masks(x.shape[1], x.shape[2], patch, stride))[:, None, :, :, None]
    x_noisy = noised(x, noise)

    def one(mask):
        x_in = jnp.where(mask, x_noisy, x)
        return x0_fn(x_in, mask) * mask

    total = jax.lax.map(one, masks).sum(axis=0)
    coverage = masks.astype(x.dtype).sum(axis=0)
    return total / jnp.maximum(coverage, 1.0)
