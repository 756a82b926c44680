"""bench/resolution_ceiling.py: the reference's round trip through the model's slices loses nothing at the
crop's own size and loses the thin enhancing rim first when the slices are small."""

from __future__ import annotations

import pathlib
import sys

import nibabel as nib
import numpy as np

from data_pipelines import brats
from diffseg_jax.tasks import segmentation

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import resolution_ceiling  # noqa: E402


def _volume() -> brats.CaseVolume:
    """A 40-voxel brain with a 2-voxel enhancing rim around a necrotic core inside oedema (labels 0/1/2/4)."""
    shape = (48, 48, 6)
    brain = np.zeros(shape, bool)
    brain[4:44, 4:44] = True
    x, y = np.meshgrid(np.arange(48), np.arange(48), indexing="ij")
    r = np.hypot(x - 24, y - 24)[..., None].repeat(6, axis=2)
    seg = np.zeros(shape, np.uint8)
    seg[r < 14] = 2
    seg[r < 8] = 4
    seg[r < 6] = 1
    images = np.where(brain[..., None], 1.0, 0.0).astype(np.float32).repeat(4, axis=-1)
    return brats.CaseVolume(
        case_id="rim",
        images=images,
        available=(True,) * 4,
        seg=seg,
        affine=np.eye(4),
        header=nib.Nifti1Header(),
        spacing=(1.0, 1.0, 1.0),
        convention="brats2021",
        brain=brain,
    )


def test_round_trip_is_exact_at_the_crops_size_and_loses_the_rim_when_small():
    volume = _volume()
    side = 44  # the brain's 40 voxels and the crop's margin of 2 on each side
    exact = resolution_ceiling.round_trip_labels(volume, side)
    np.testing.assert_array_equal(exact, volume.seg)
    small = segmentation.case_metrics(resolution_ceiling.round_trip_labels(volume, 11), volume, "regions")
    assert small["wt"]["dice"] > 0.9
    assert small["et"]["dice"] < small["wt"]["dice"] - 0.1
