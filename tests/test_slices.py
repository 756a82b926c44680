"""Tests for data_pipelines.slices: normalisation, geometry, slice round trips, selection."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from data_pipelines import slices as sl
from data_pipelines.brain import brain_mask


def _box_volume(shape: tuple[int, int, int], box: tuple[slice, slice, slice], k: int = 4):
    vol = np.zeros((*shape, k), dtype=np.float32)
    vol[box] = 1.0
    return vol


def test_brain_mask_any_modality_nonzero():
    images = np.zeros((4, 5, 6, 4), np.float32)
    images[1, 2, 3, 2] = -0.5
    mask = brain_mask(images)
    assert mask.shape == (4, 5, 6) and mask.dtype == bool
    assert mask.sum() == 1 and mask[1, 2, 3]


def test_normalize_zscore_inside_brain_zero_outside_missing_stays_zero():
    rng = np.random.default_rng(0)
    images = np.zeros((10, 10, 6, 4), np.float32)
    mask = np.zeros((10, 10, 6), bool)
    mask[2:8, 2:8, 1:5] = True
    images[..., 0][mask] = rng.normal(100.0, 20.0, mask.sum())
    images[..., 1][mask] = 7.0  # constant: std floor, must not blow up
    images[..., 3][mask] = rng.normal(5.0, 1.0, mask.sum())
    images[0, 0, 0, 3] = 1e6  # outlier outside the mask -> ignored and zeroed
    out = sl.normalize(images, mask)
    assert out.dtype == np.float32 and out.shape == images.shape
    assert abs(out[..., 0][mask].mean()) < 1e-4 and abs(out[..., 0][mask].std() - 1) < 1e-3
    assert np.all(out[~mask] == 0)
    assert np.all(out[..., 1] == 0)  # constant within brain -> 0 after centring
    assert np.all(out[..., 2] == 0)  # missing modality
    assert np.all(np.abs(out) <= 5.0)


def test_normalize_clips():
    images = np.ones((100, 1, 1, 1), np.float32)
    images[0] = 1000.0
    out = sl.normalize(images, np.ones((100, 1, 1), bool))
    assert out.max() == pytest.approx(5.0)


def test_slice_geometry_box_with_margin_and_clipping():
    mask = np.zeros((30, 40, 10), bool)
    mask[5:15, 1:31, 3:7] = True
    g = sl.slice_geometry(mask, image_size=16, margin=2)
    assert (g.x0, g.x1, g.y0, g.y1) == (3, 17, 0, 33)
    assert g.side == 33 and g.image_size == 16 and g.volume_shape == (30, 40, 10)
    empty = sl.slice_geometry(np.zeros((8, 6, 3), bool), image_size=4)
    assert (empty.x0, empty.x1, empty.y0, empty.y1, empty.side) == (0, 8, 0, 6, 8)


def test_round_trip_smooth_volume():
    shape = (40, 30, 8)
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    smooth = np.stack([np.sin(x / 9.0) + np.cos(y / 7.0) + z / 8.0, x / 40.0 - y / 30.0], -1)
    mask = np.zeros(shape, bool)
    mask[6:33, 4:25] = True
    g = sl.slice_geometry(mask, image_size=48)
    zs = np.array([1, 4, 6])
    s = sl.to_slices(smooth, g, zs)
    assert s.shape == (3, 48, 48, 2) and s.dtype == np.float32
    back = sl.from_slices(s, g, zs, fill=np.nan)
    assert back.shape == (*shape, 2) and back.dtype == np.float32
    inner = (slice(g.x0 + 1, g.x1 - 1), slice(g.y0 + 1, g.y1 - 1), zs)
    np.testing.assert_allclose(back[inner], smooth[inner], atol=0.03)
    assert np.isnan(back[:, :, [0, 2, 3, 5, 7]]).all()
    assert np.all(back[: g.x0, :, zs] == 0) and np.all(back[:, g.y1 :, zs] == 0)


def test_downsampled_round_trip_is_close_for_smooth_volume():
    shape = (64, 50, 3)
    x, y, _ = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    smooth = (np.sin(x / 12.0) * np.cos(y / 10.0))[..., None]
    g = sl.slice_geometry(np.ones(shape, bool), image_size=32, margin=0)
    back = sl.from_slices(sl.to_slices(smooth, g, [1]), g, [1])
    np.testing.assert_allclose(back[4:-4, 4:-4, 1], smooth[4:-4, 4:-4, 1], atol=0.05)


@pytest.mark.parametrize("shape", [(240, 240, 155), (99, 117, 95)])
def test_typical_and_odd_volume_shapes(shape):
    x, y, z = shape
    vol = _box_volume(shape, (slice(x // 5, 4 * x // 5), slice(y // 6, 5 * y // 6), slice(5, z - 5)))
    g = sl.slice_geometry(brain_mask(vol), image_size=32)
    zs = np.array([0, z // 2, z - 1])
    s = sl.to_slices(vol, g, zs)
    assert s.shape == (3, 32, 32, 4)
    assert np.all(s[0] == 0) and s[1].max() == pytest.approx(1.0)
    back = sl.from_slices(s, g, zs)
    assert back.shape == (*shape, 4)
    centre = back[x // 2 - 3 : x // 2 + 3, y // 2 - 3 : y // 2 + 3, z // 2]
    np.testing.assert_allclose(centre, 1.0, atol=1e-5)


def test_label_slices_are_binary_and_area_like():
    shape = (64, 64, 2)
    lab = np.zeros((*shape, 2), np.float32)
    lab[10, 10, 0, 0] = 1  # single voxel: vanishes at 4x downsampling
    lab[20:32, 30:42, 0, 1] = 1  # 12x12 block -> about 3x3 pixels
    g = sl.slice_geometry(np.ones(shape, bool), image_size=16, margin=0)
    s = sl.to_slices(lab, g, [0], is_label=True)
    assert set(np.unique(s)) <= {0.0, 1.0}
    assert s[..., 0].sum() == 0
    assert 6 <= s[..., 1].sum() <= 16
    up = sl.to_slices(
        lab[20:36, 28:44], sl.slice_geometry(np.ones((16, 16, 2), bool), 64, 0), [0], is_label=True
    )
    assert set(np.unique(up)) <= {0.0, 1.0} and up[0, :, :, 1].sum() > 0


def test_select_slices_range_and_tumour_plus_healthy():
    mask = np.zeros((8, 8, 40), bool)
    mask[2:6, 2:6, 5:35] = True
    regions = np.zeros((8, 8, 40, 3), bool)
    regions[3:5, 3:5, 10:18, 0] = True  # 8 tumour slices
    got = sl.select_slices(mask, regions, slice_range=(0, 8), rng=np.random.default_rng(0))
    np.testing.assert_array_equal(got, [5, 6, 7])
    z = sl.select_slices(mask, regions, healthy_fraction=0.25, rng=np.random.default_rng(1))
    assert z.dtype == np.int32 and np.all(np.diff(z) > 0)
    assert set(range(10, 18)) <= set(z.tolist()) and len(z) == 10
    assert all(5 <= v < 35 for v in z)  # healthy samples contain brain
    again = sl.select_slices(mask, regions, healthy_fraction=0.25, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(z, again)
    one = np.zeros_like(regions)
    one[3, 3, 20, 0] = True
    assert len(sl.select_slices(mask, one, rng=np.random.default_rng(0))) == 2  # >= 1 healthy
    none = sl.select_slices(mask, one, healthy_fraction=0.0, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(none, [20])


def _fake_case(seg: np.ndarray | None):
    images = np.zeros((20, 24, 12, 4), np.float32)
    images[3:17, 4:20, 2:10] = np.random.default_rng(0).uniform(1, 2, (14, 16, 8, 4))
    images[..., 2] = 0  # missing t2
    brain = brain_mask(images)
    return SimpleNamespace(images=images, seg=seg, convention="brats2021", case_id="c", brain=brain)


def test_case_examples_shapes_and_targets():
    seg = np.zeros((20, 24, 12), np.uint8)
    seg[6:12, 8:14, 4:7] = 2
    seg[8:10, 10:12, 5] = 4
    case = _fake_case(seg)
    ex = sl.case_examples(case, 16, rng=np.random.default_rng(0))
    n = len(ex["z"])
    assert n == 4 and ex["z"].dtype == np.int32  # 3 tumour slices + 1 healthy
    assert ex["image"].shape == (n, 16, 16, 4) and ex["image"].dtype == np.float32
    assert ex["label"].shape == (n, 16, 16, 3) and ex["label"].dtype == np.float32
    assert np.all(ex["image"][..., 2] == 0)
    assert ex["label"][..., 0].sum() > 0 and ex["label"][..., 2].sum() > 0
    wt = sl.case_examples(case, 16, target="wt", slice_range=(0, 12), rng=np.random.default_rng(0))
    assert wt["label"].shape == (8, 16, 16, 1)
    no_seg = sl.case_examples(_fake_case(None), 8, slice_range=(0, 12), rng=np.random.default_rng(0))
    assert no_seg["label"].shape == (8, 8, 8, 3) and not no_seg["label"].any()
    with pytest.raises(ValueError):
        sl.case_examples(case, 16, target="bad", rng=np.random.default_rng(0))


def test_slice_range_none_from_the_command_line_means_unset():
    from configs import btsegdiff
    from data_pipelines.sources import slice_range

    config = btsegdiff.get_config("paper")
    assert slice_range(config) == (80, 120)
    config.data.slice_range = (None,)  # what `--config.data.slice_range=None` gives
    assert slice_range(config) is None
    config.data.slice_range = (1, 2, 3)
    with pytest.raises(ValueError, match="slice_range"):
        slice_range(config)


def test_normalized_slices_equal_slicing_the_normalised_volume():
    rng = np.random.default_rng(1)
    mask = np.zeros((20, 18, 9), bool)
    mask[4:15, 3:12, 2:7] = rng.random((11, 9, 5)) > 0.2
    images = rng.normal(50.0, 10.0, (20, 18, 9, 4)).astype(np.float32)  # non-zero background too
    geom = sl.slice_geometry(mask, image_size=8)
    z = np.flatnonzero(mask.any(axis=(0, 1)))
    expected = sl.to_slices(sl.normalize(images, mask), geom, z)
    np.testing.assert_allclose(sl.normalized_slices(images, mask, geom, z), expected, atol=1e-6)
    with pytest.raises(ValueError, match="every brain voxel"):
        sl.normalized_slices(images, mask, geom, z[1:])
