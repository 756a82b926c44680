"""Volume <-> 2D axial slice conversion for BraTS-style multimodal MRI (channels-last).

Axial means the third voxel axis (z). Slices are cropped to the brain's in-plane bounding box
(shared by all slices of a volume), zero-padded centred to a square and resized to S x S, so
models see the brain at a consistent scale regardless of the scanner grid (240x240x155 BraTS
or any other shape). ``from_slices`` inverts this to paste predictions back into voxel space.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from data_pipelines.brats import CaseVolume

_STD_FLOOR = 1e-6
_CLIP = 5.0
TARGET_CHANNELS = {"regions": 3, "wt": 1}


def normalize(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Z-score each modality over brain voxels (intensities are scanner-arbitrary).

    Statistics come from brain voxels only, so the background value does not matter. Outside the brain
    is 0, a modality that is zero throughout the brain (missing) stays 0 so it reads as "absent", and
    values are clipped to [-5, 5] to tame hyperintense outliers.
    """
    images = np.asarray(images, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(images.shape, dtype=np.float32)
    values = images[mask]  # [brain voxels, K]: one gather for every modality
    mean = values.mean(axis=0, dtype=np.float64)
    std = np.maximum(values.std(axis=0, dtype=np.float64), _STD_FLOOR)
    out = images - mean.astype(np.float32)  # a missing modality: all zeros in the brain, mean 0 -> stays 0
    out /= std.astype(np.float32)
    np.clip(out, -_CLIP, _CLIP, out=out)
    np.copyto(out, 0.0, where=~mask[..., None])
    return out


@dataclass(frozen=True)
class SliceGeometry:
    """How slices of one volume map to S x S images (needed to invert ``to_slices``).

    ``[x0:x1, y0:y1]`` is the in-plane crop (brain bounding box + margin, clipped to the
    volume); the crop is zero-padded centred to ``side`` x ``side`` and resized to
    ``image_size``.
    """

    x0: int
    x1: int
    y0: int
    y1: int
    side: int
    image_size: int
    volume_shape: tuple[int, int, int]

    @property
    def pad_x(self) -> int:
        """Zeros added before the crop along x when centring it in the square."""
        return (self.side - (self.x1 - self.x0)) // 2

    @property
    def pad_y(self) -> int:
        """Zeros added before the crop along y when centring it in the square."""
        return (self.side - (self.y1 - self.y0)) // 2


def _bounds(any_along: np.ndarray, margin: int) -> tuple[int, int]:
    idx = np.flatnonzero(any_along)
    n = any_along.shape[0]
    if idx.size == 0:
        return 0, n
    return max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, n)


def slice_geometry(mask: np.ndarray, image_size: int, margin: int = 2) -> SliceGeometry:
    """Crop box of the brain over the whole volume, so every slice shares one geometry."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be [X,Y,Z], got shape {mask.shape}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    in_plane = mask.any(axis=2)
    x0, x1 = _bounds(in_plane.any(axis=1), margin)
    y0, y1 = _bounds(in_plane.any(axis=0), margin)
    side = max(x1 - x0, y1 - y0)
    shape = tuple(int(s) for s in mask.shape)
    return SliceGeometry(x0, x1, y0, y1, side, int(image_size), shape)  # type: ignore[arg-type]


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] linear-interpolation weights (half-pixel centres, antialiased when shrinking).

    When shrinking, the triangle kernel is widened by the scale, which makes it an area-like
    average; this is what keeps thin label structures from flickering in or out.
    """
    scale = n_in / n_out
    kernel = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    dist = np.abs(np.arange(n_in)[None, :] - centres[:, None]) / kernel
    w = np.maximum(0.0, 1.0 - dist)
    return w / w.sum(axis=1, keepdims=True)


def _check_volume(volume: np.ndarray, geom: SliceGeometry) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim == 3:
        volume = volume[..., None]
    if tuple(volume.shape[:3]) != tuple(geom.volume_shape):
        raise ValueError(f"volume shape {volume.shape[:3]} != geometry {geom.volume_shape}")
    return volume


def to_slices(
    volume: np.ndarray,
    geom: SliceGeometry,
    z: np.ndarray | Sequence[int],
    *,
    is_label: bool = False,
) -> np.ndarray:
    """[X,Y,Z,K] volume -> [N,S,S,K] float32 axial slices at indices ``z``.

    Labels are resized as float masks (area-like when shrinking) and thresholded at 0.5, so
    the output is in {0, 1}.
    """
    volume = _check_volume(volume, geom)
    z = np.asarray(z, dtype=np.int64).reshape(-1)
    s = geom.image_size
    full_x = _resize_matrix(geom.side, s)
    full_y = _resize_matrix(geom.side, s)
    # Zero padding is folded into the weights: only the crop's columns contribute.
    mx = full_x[:, geom.pad_x : geom.pad_x + geom.x1 - geom.x0]
    my = full_y[:, geom.pad_y : geom.pad_y + geom.y1 - geom.y0]
    crop = volume[geom.x0 : geom.x1, geom.y0 : geom.y1][:, :, z].astype(np.float32)
    out = np.einsum("ai,ijnk->anjk", mx.astype(np.float32), crop, optimize=True)
    out = np.einsum("bj,anjk->nabk", my.astype(np.float32), out, optimize=True)
    if is_label:
        out = (out >= 0.5).astype(np.float32)
    return np.ascontiguousarray(out, dtype=np.float32)


def _axial_index(z: np.ndarray) -> np.ndarray | slice:
    """`z` as a slice when it is a run of consecutive indices (a view instead of a gather or scatter)."""
    if z.size and np.array_equal(z, np.arange(z[0], z[0] + z.size)):
        return slice(int(z[0]), int(z[0]) + z.size)
    return z


def normalized_slices(
    images: np.ndarray, mask: np.ndarray, geom: SliceGeometry, z: np.ndarray | Sequence[int]
) -> np.ndarray:
    """``to_slices(normalize(images, mask), geom, z)``, normalising only the voxels it reads.

    With ``geom`` from ``slice_geometry(mask)`` and ``z`` every slice that holds brain, the crop holds every
    brain voxel, so the statistics, and the slices, are the same as from the whole volume. Each sequence is
    normalised and resized on its own thread (numpy releases the GIL): half the time on two cores, the
    same values.
    """
    z = np.asarray(z, dtype=np.int64).reshape(-1)
    box = (slice(geom.x0, geom.x1), slice(geom.y0, geom.y1), _axial_index(z))
    crop_mask = np.asarray(mask, dtype=bool)[box]
    if crop_mask.sum() != np.count_nonzero(mask):
        raise ValueError("the crop box and slices z must hold every brain voxel")
    width, height = geom.x1 - geom.x0, geom.y1 - geom.y0
    local = replace(geom, x0=0, x1=width, y0=0, y1=height, volume_shape=crop_mask.shape)
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]

    def sequence(k: int) -> np.ndarray:
        one = images[box + (slice(k, k + 1),)]
        return to_slices(normalize(one, crop_mask), local, np.arange(z.size))

    channels = images.shape[-1]
    with ThreadPoolExecutor(min(channels, os.cpu_count() or 1)) as pool:
        return np.concatenate(list(pool.map(sequence, range(channels))), axis=-1)


def from_slices(
    slices: np.ndarray, geom: SliceGeometry, z: np.ndarray | Sequence[int], fill: float = 0.0
) -> np.ndarray:
    """Inverse of ``to_slices``: [N,S,S,K] -> [X,Y,Z,K] float32 in the original voxel grid.

    Slices not listed in ``z`` get ``fill`` (e.g. NaN to mark "not predicted"); inside the
    listed slices, voxels outside the crop box are background and get 0.
    """
    slices = np.asarray(slices, dtype=np.float32)
    z = np.asarray(z, dtype=np.int64).reshape(-1)
    s = geom.image_size
    if slices.ndim != 4 or slices.shape[1:3] != (s, s) or slices.shape[0] != z.size:
        raise ValueError(f"slices shape {slices.shape} does not match {z.size} slices of {s}x{s}")
    back_x = _resize_matrix(s, geom.side)[geom.pad_x : geom.pad_x + geom.x1 - geom.x0]
    back_y = _resize_matrix(s, geom.side)[geom.pad_y : geom.pad_y + geom.y1 - geom.y0]
    crop = np.einsum("ia,nabk->ibnk", back_x.astype(np.float32), slices, optimize=True)
    crop = np.einsum("jb,ibnk->ijnk", back_y.astype(np.float32), crop, optimize=True)
    shape = (*geom.volume_shape, slices.shape[-1])
    if fill == 0.0:
        out = np.zeros(shape, dtype=np.float32)  # zero pages are free until written
    else:
        out = np.full(shape, fill, dtype=np.float32)
        out[:, :, z] = 0.0
    out[geom.x0 : geom.x1, geom.y0 : geom.y1, _axial_index(z)] = crop
    return out


def select_slices(
    mask: np.ndarray,
    regions: np.ndarray,
    *,
    slice_range: tuple[int, int] | None = None,
    healthy_fraction: float = 0.25,
    rng: np.random.Generator,
) -> np.ndarray:
    """Sorted unique z indices to train on.

    Without ``slice_range``: every tumour slice (WT present) plus a random sample of
    ``healthy_fraction`` x #tumour healthy brain slices (at least one when any exist and the
    fraction is positive), so tumour slices dominate but the model still sees healthy anatomy.
    With ``slice_range=(lo, hi)``: the brain-containing slices with lo <= z < hi.
    """
    mask = np.asarray(mask, dtype=bool)
    brain_z = mask.any(axis=(0, 1))
    if slice_range is not None:
        lo, hi = slice_range
        zs = np.arange(brain_z.size)
        return zs[(zs >= lo) & (zs < hi) & brain_z].astype(np.int32)
    tumour_z = np.asarray(regions)[..., 0].any(axis=(0, 1))
    tumour = np.flatnonzero(tumour_z)
    healthy = np.flatnonzero(brain_z & ~tumour_z)
    n_healthy = 0
    if healthy_fraction > 0 and healthy.size:
        n_healthy = min(healthy.size, max(1, int(round(healthy_fraction * tumour.size))))
    sample = rng.choice(healthy, size=n_healthy, replace=False) if n_healthy else healthy[:0]
    return np.unique(np.concatenate([tumour, sample])).astype(np.int32)


def case_examples(
    volume: CaseVolume,
    image_size: int,
    *,
    target: str = "regions",
    slice_range: tuple[int, int] | None = None,
    healthy_fraction: float = 0.25,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Training examples of one case: normalised image slices and region-label slices.

    Returns {"image": [N,S,S,4] float32, "label": [N,S,S,C] float32 in {0,1} (C=3 WT/TC/ET for
    target "regions", 1 for "wt"), "z": int32 [N]}; labels are zeros when the case has no seg.
    """
    if target not in TARGET_CHANNELS:
        raise ValueError(f"target must be one of {sorted(TARGET_CHANNELS)}, got {target!r}")
    from data_pipelines.brats import labels_to_regions

    images = np.asarray(volume.images, dtype=np.float32)
    mask = volume.brain
    geom = slice_geometry(mask, image_size)
    if volume.seg is None:
        regions = np.zeros((*images.shape[:3], 3), dtype=bool)
    else:
        regions = np.asarray(labels_to_regions(volume.seg, volume.convention), dtype=bool)
    z = select_slices(mask, regions, slice_range=slice_range, healthy_fraction=healthy_fraction, rng=rng)
    channels = TARGET_CHANNELS[target]
    return {
        "image": to_slices(normalize(images, mask), geom, z),
        "label": to_slices(regions[..., :channels].astype(np.float32), geom, z, is_label=True),
        "z": z.astype(np.int32),
    }
