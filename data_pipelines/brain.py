"""The brain of a scan when no mask file says where it is: every voxel that is not background.

The background is not always 0: scans z-scored before distribution (BraTS 2013 as DeepMedic ships it) have a
constant negative background, raw scans the air level. Its value is the one most common on the volume's faces.
"""

from __future__ import annotations

import numpy as np


def background_value(channel: np.ndarray) -> float:
    """The value most common on the volume's six faces: 0 for BraTS, a constant negative value for scans
    z-scored before skull-stripping's zeros were replaced, the air level of raw data."""
    channel = np.asarray(channel)
    faces = [channel[[0, -1]], channel[:, [0, -1]], channel[:, :, [0, -1]]]
    values, counts = np.unique(np.concatenate([f.ravel() for f in faces]), return_counts=True)
    return float(values[np.argmax(counts)])


def brain_mask(images: np.ndarray) -> np.ndarray:
    """Bool [X,Y,Z] brain mask of skull-stripped scans: every voxel where some sequence differs from its
    background value (:func:`background_value`); a missing (all-zero) sequence adds nothing."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    mask = np.zeros(images.shape[:3], dtype=bool)
    for k in range(images.shape[-1]):
        channel = images[..., k]
        mask |= channel != background_value(channel)
    return mask
