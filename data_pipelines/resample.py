"""Bringing scans of one subject onto one voxel grid by their affines (IXI's T1 is sagittal at 1.2 mm, its T2
axial at 1.25 mm: same head, same scanner space, different grids).

The target grid is oriented as RAS (the third axis axial, which is the axis slices are cut along); it is
either the first sequence's own grid reoriented (``first``: a permutation and flips, no resampling of that
sequence) or the same field of view at 1 mm isotropic (``1mm``).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

MODES = ("", "first", "1mm")


def target_grid(img: nib.Nifti1Image, mode: str) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, affine) of the grid ``mode`` derives from ``img``."""
    if mode not in MODES[1:]:
        raise ValueError(f"resample={mode!r}: expected one of {MODES[1:]}")
    ras = nib.as_closest_canonical(img)
    shape = np.array(ras.shape[:3], np.int64)
    affine = np.array(ras.affine, np.float64)
    if mode == "1mm":
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        extent = shape * zooms  # the field of view in mm along each axis
        new_shape = np.maximum(np.round(extent).astype(np.int64), 1)
        step = extent / new_shape  # ~1 mm, covering exactly the same field of view
        scale = step / zooms
        index_map = np.eye(4)
        index_map[:3, :3] = np.diag(scale)
        index_map[:3, 3] = 0.5 * scale - 0.5  # voxel centres: the boxes share their outer faces
        affine, shape = affine @ index_map, new_shape
    return tuple(int(n) for n in shape), affine  # type: ignore[return-value]


def resample_to(
    data: np.ndarray,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    target_affine: np.ndarray,
    order: int = 1,
) -> np.ndarray:
    """``data`` (on ``affine``) sampled at the target grid's voxel centres; 0 outside its field of view."""
    voxel_map = np.linalg.solve(np.asarray(affine, np.float64), np.asarray(target_affine, np.float64))
    return ndimage.affine_transform(
        np.asarray(data, np.float32),
        voxel_map[:3, :3],
        offset=voxel_map[:3, 3],
        output_shape=tuple(shape),
        order=order,
        mode="constant",
        cval=0.0,
    )
