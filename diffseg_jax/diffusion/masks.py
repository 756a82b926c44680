"""Masks for the masked and patched anomaly detectors: frequency boxes, random boxes/patches, pDDPM grids.

A healthy-only model detects anomalies by failing to reconstruct them; these corruptions decide what it
must reconstruct from context during training (pDDPM: one noised patch; mDDPM: boxes with only low or
high frequencies left; UMA-DDPM: high frequencies only, with patches hidden). All random functions are
pure functions of a `jax.random` key and work under `jit`; batch masks are [B, H, W, 1] booleans
(True = corrupted), which broadcast over the channels of [B, H, W, C] images.

Frequency boxes use integer frequencies k in fftfreq order and select |k_y| <= r and |k_x| <= r, a
(2r+1)-wide square centred on DC after fftshift. The box is point-symmetric, so the filtered image is
real (the published versions slice [c - r, c + r), which is not, and keep only the real part).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Keep = Literal["low", "high"]
Grid = Literal["centered", "fft2", "rfft2"]
_AXES = (1, 2)


def _check_keep(keep: str) -> None:
    if keep not in ("low", "high"):
        raise ValueError(f"keep must be 'low' or 'high', got {keep!r}")


def frequency_box_mask(
    height: int, width: int, half_width: int | jnp.ndarray, keep: Keep = "low", grid: Grid = "centered"
) -> jnp.ndarray:
    """Boolean mask of the kept frequencies on a spectrum grid.

    grid: 'centered' = fft2 after fftshift [H, W]; 'fft2' = unshifted fft2 [H, W]; 'rfft2' = [H, W//2+1].
    half_width may be a traced scalar or a [B] array (then the mask is [B, ...]); low and high masks of
    the same half-width partition the grid.
    """
    _check_keep(keep)
    if grid not in ("centered", "fft2", "rfft2"):
        raise ValueError(f"grid must be 'centered', 'fft2' or 'rfft2', got {grid!r}")
    ky = np.fft.fftfreq(height, 1.0 / height)
    kx = np.fft.rfftfreq(width, 1.0 / width) if grid == "rfft2" else np.fft.fftfreq(width, 1.0 / width)
    if grid == "centered":
        ky, kx = np.fft.fftshift(ky), np.fft.fftshift(kx)
    r = jnp.asarray(half_width)[..., None, None]
    low = (jnp.abs(jnp.asarray(ky))[:, None] <= r) & (jnp.abs(jnp.asarray(kx))[None, :] <= r)
    return low if keep == "low" else ~low


def frequency_filter(images: jnp.ndarray, half_width: int | jnp.ndarray, keep: Keep = "low") -> jnp.ndarray:
    """Ideal low- or high-pass filter of [B, H, W, C] images with a centred square spectrum box.

    half_width: a scalar or one value per example ([B]).
    """
    _, h, w, _ = images.shape
    mask = frequency_box_mask(h, w, half_width, keep, grid="centered")
    mask = mask[..., None] if mask.ndim == 3 else mask[None, ..., None]
    spec = jnp.fft.fftshift(jnp.fft.fft2(images, axes=_AXES), axes=_AXES)
    out = jnp.fft.ifft2(jnp.fft.ifftshift(spec * mask, axes=_AXES), axes=_AXES)
    return out.real.astype(images.dtype)


def random_boxes(
    key: jax.Array, batch: int, height: int, width: int, min_size: int, max_size: int
) -> jnp.ndarray:
    """One axis-aligned box per example, [B, H, W, 1]; sides uniform in [min_size, max_size], fully inside."""
    if not 1 <= min_size <= max_size <= min(height, width):
        raise ValueError(
            f"need 1 <= min_size <= max_size <= min(height, width); got {min_size}, {max_size}, "
            f"{height}x{width}"
        )
    k_h, k_w, k_y, k_x = jax.random.split(key, 4)
    size_h = jax.random.randint(k_h, (batch,), min_size, max_size + 1)
    size_w = jax.random.randint(k_w, (batch,), min_size, max_size + 1)
    y0 = jax.random.randint(k_y, (batch,), 0, height - size_h + 1)
    x0 = jax.random.randint(k_x, (batch,), 0, width - size_w + 1)
    rows, cols = jnp.arange(height)[None], jnp.arange(width)[None]
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + size_h)[:, None])
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + size_w)[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :])[..., None]


def random_patch_dropout(
    key: jax.Array, batch: int, height: int, width: int, patch: int, ratio: float
) -> jnp.ndarray:
    """MAE-style masking: exactly round(ratio * cells) cells of a patch grid per example, [B, H, W, 1].

    The grid is ceil(H/patch) x ceil(W/patch); cells at the border are cropped to the image.
    """
    if patch < 1 or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"need patch >= 1 and 0 <= ratio <= 1, got patch={patch}, ratio={ratio}")
    gh, gw = math.ceil(height / patch), math.ceil(width / patch)
    n_masked = round(ratio * gh * gw)
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (batch, gh * gw)), axis=1), axis=1)
    cells = (ranks < n_masked).reshape(batch, gh, gw)
    full = jnp.repeat(jnp.repeat(cells, patch, axis=1), patch, axis=2)
    return full[:, :height, :width, None]


class UMAMasks(NamedTuple):
    image: jnp.ndarray  # network input: high-pass image with the spatial mask filled
    high_pass: jnp.ndarray  # the frequency-masked image before spatial masking
    spatial_mask: jnp.ndarray  # [B, H, W, 1], True = hidden


def uma_masking(
    key: jax.Array,
    images: jnp.ndarray,
    half_width: int = 4,
    spatial: Literal["patch", "box"] = "patch",
    patch: int = 8,
    ratio: float = 0.25,
    box_size: tuple[int, int] | None = None,
    fill: float = 0.0,
) -> UMAMasks:
    """UMA-DDPM's masking module: keep the high frequencies, then hide random patches (or one box).

    Removing the low frequencies takes away the intensity a lesion would alter, and hiding regions forces
    reconstruction from context. box_size = (min, max) side in pixels, default (H//8, H//2).
    half_width, patch and ratio are our defaults; the paper does not fix them.
    """
    b, h, w, _ = images.shape
    high = frequency_filter(images, half_width, keep="high")
    if spatial == "patch":
        mask = random_patch_dropout(key, b, h, w, patch, ratio)
    elif spatial == "box":
        lo, hi = box_size if box_size is not None else (max(1, min(h, w) // 8), max(1, min(h, w) // 2))
        mask = random_boxes(key, b, h, w, lo, hi)
    else:
        raise ValueError(f"spatial must be 'patch' or 'box', got {spatial!r}")
    return UMAMasks(jnp.where(mask, jnp.asarray(fill, images.dtype), high), high, mask)


class BoxCorruption(NamedTuple):
    image: jnp.ndarray  # images with each box replaced by its filtered version
    mask: jnp.ndarray  # [B, H, W, 1], True inside the box
    half_width: jnp.ndarray  # [B] int, spectrum box half-width used per example
    kept_low: jnp.ndarray  # [B] bool, True = low-pass, False = high-pass


def mddpm_box_corruption(
    key: jax.Array,
    images: jnp.ndarray,
    box_size: tuple[int, int] | None = None,
    half_width_range: tuple[int, int] = (2, 10),
    keep: Keep | Literal["random"] = "random",
) -> BoxCorruption:
    """mDDPM's masked image / frequency modelling: a random box shows a low- or high-pass image.

    The half-width is uniform over the inclusive half_width_range per example; keep='random' draws low or
    high with equal probability. box_size = (min, max) side in pixels, default (H//8, H//2).
    """
    b, h, w, _ = images.shape
    k_box, k_r, k_keep = jax.random.split(key, 3)
    lo, hi = box_size if box_size is not None else (max(1, min(h, w) // 8), max(1, min(h, w) // 2))
    mask = random_boxes(k_box, b, h, w, lo, hi)
    r = jax.random.randint(k_r, (b,), half_width_range[0], half_width_range[1] + 1)
    if keep == "random":
        kept_low = jax.random.bernoulli(k_keep, 0.5, (b,))
    else:
        _check_keep(keep)
        kept_low = jnp.full((b,), keep == "low")
    low = frequency_filter(images, r, keep="low")
    filtered = jnp.where(kept_low[:, None, None, None], low, images - low)  # the two boxes partition
    return BoxCorruption(jnp.where(mask, filtered, images), mask, r, kept_low)


def patch_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start offsets of a sliding window along one axis, ending flush with the border so all is covered."""
    if not 1 <= patch <= size or stride < 1:
        raise ValueError(
            f"need 1 <= patch <= size and stride >= 1, got size={size}, patch={patch}, stride={stride}"
        )
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] + patch < size:
        starts.append(size - patch)
    return starts


def patch_grid(height: int, width: int, patch: int = 48, stride: int = 48) -> np.ndarray:
    """pDDPM's patch positions as [N, 2] (y0, x0), row-major; 96 px, patch 48, stride 48 -> a 2x2 grid."""
    ys, xs = patch_starts(height, patch, stride), patch_starts(width, patch, stride)
    return np.array([(y, x) for y in ys for x in xs], dtype=np.int32)


def patch_masks(height: int, width: int, patch: int = 48, stride: int = 48) -> np.ndarray:
    """One boolean [H, W] mask per grid patch, [N, H, W]; at test time pDDPM reconstructs each in turn."""
    grid = patch_grid(height, width, patch, stride)
    masks = np.zeros((len(grid), height, width), dtype=bool)
    for n, (y, x) in enumerate(grid):
        masks[n, y : y + patch, x : x + patch] = True
    return masks


def random_patch_mask(
    key: jax.Array, batch: int, height: int, width: int, patch: int = 48, stride: int = 48
) -> jnp.ndarray:
    """pDDPM training mask: one grid patch per example, uniformly chosen, [B, H, W, 1]."""
    masks = jnp.asarray(patch_masks(height, width, patch, stride))
    idx = jax.random.randint(key, (batch,), 0, masks.shape[0])
    return masks[idx][..., None]
