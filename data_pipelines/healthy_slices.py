"""Healthy training slices taken from tumour cases: the axial slices that hold no tumour, kept a margin away.

When no healthy cohort is at hand, the field trains unsupervised detectors on the slices of labelled tumour
scans whose reference has no tumour voxel. Those slices lie above and below the tumour, so their anatomy
differs from the test slices (more cerebellum and vertex, less of the ventricles); a margin of slices from the
nearest tumour voxel keeps out the oedema the reference may have missed at the tumour's ends.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def brain_box(brain: np.ndarray) -> tuple[slice, slice, slice]:
    """The brain's bounding box, the crop the anomaly preprocessing resamples to its grid."""
    return tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(brain))


def healthy_grid_slices(tumour: np.ndarray, brain: np.ndarray, depth: int, margin: int) -> np.ndarray:
    """Indices of the `depth` grid slices (resampled over the brain's axial extent) that read only source
    slices at least `margin` slices away from any tumour voxel. `tumour`, `brain`: [H, W, D] source arrays.

    Grid slice i samples source position c = (i + 0.5) n / depth - 0.5 of the n cropped slices by linear
    interpolation, so it reads the source slices within half a grid step of c (and the two around c).
    """
    box = brain_box(np.asarray(brain, bool))[2]
    n = box.stop - box.start
    has_tumour = np.asarray(tumour, bool)[:, :, box].any(axis=(0, 1))
    near = has_tumour
    if margin > 0 and has_tumour.any():
        near = ndimage.binary_dilation(has_tumour, iterations=int(margin))
    centre = (np.arange(depth) + 0.5) * n / depth - 0.5
    half = max(0.5 * n / depth, 1.0)
    lo = np.clip(np.floor(centre - half), 0, n - 1).astype(int)
    hi = np.clip(np.ceil(centre + half), 0, n - 1).astype(int)
    return np.array([i for i in range(depth) if not near[lo[i] : hi[i] + 1].any()], np.int64)


def margin_slices(margin_mm: float, affine: np.ndarray) -> int:
    """A margin in mm as a number of source slices (the third voxel axis's spacing)."""
    spacing = float(np.linalg.norm(np.asarray(affine, np.float64)[:3, 2]))
    return int(np.ceil(margin_mm / spacing)) if margin_mm > 0 else 0
