"""Healthy-brain data for anomaly detection: IXI-layout phantom, preprocessing, splits and slices (the IXI
reader: tests/test_ixi_reader.py).

Tiny sizes throughout (4 mm phantom, grids of 16 x 16 x 8) so the file runs in seconds.
"""

import json
import pathlib
import re

import ml_collections
import nibabel as nib
import numpy as np
import pytest
from conftest import require_real_data

from data_pipelines import (
    anomaly_data,
    brats,
    case_splits,
    ixi,
    phantom,
    phantom_ixi,
    sources,
)
from data_pipelines.brats import DataError

SPACING = 4.0
NAME = re.compile(r"IXI(\d{3})-(Guys|HH|IOP)-(\d{4})-(T1|T2|mask)\.nii\.gz")


def _arrays(folder):
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


@pytest.fixture(scope="module")
def ixi_root(tmp_path_factory):
    return phantom_ixi.write_ixi_dataset(
        tmp_path_factory.mktemp("ixi") / "a", num_subjects=4, seed=0, spacing_mm=SPACING, progress=False
    )


# --- phantom_ixi -------------------------------------------------------------------------------


def test_ixi_phantom_file_names(ixi_root):
    names = sorted(p.name for p in ixi_root.iterdir())
    assert names.pop(names.index("phantom_ixi.json"))
    matches = [NAME.fullmatch(n) for n in names]
    assert all(matches), names
    subjects = sorted({n.rsplit("-", 1)[0] for n in names})
    assert len(subjects) == 4 and len(names) == 12  # T1, T2, mask per subject, one flat folder
    numbers = sorted(int(m.group(1)) for m in matches if m.group(4) == "T1")
    assert numbers == [1, 2, 3, 4]
    sites = [m.group(2) for m in sorted(matches, key=lambda m: m.group(1)) if m.group(4) == "T1"]
    assert sites == ["Guys", "HH", "IOP", "Guys"]
    meta = json.loads((ixi_root / "phantom_ixi.json").read_text())
    assert meta["layout"] == "IXI" and meta["num_subjects"] == 4 and meta["seed"] == 0
    assert meta["spacing_mm"] == SPACING
    found = ixi.find_subjects(ixi_root)
    assert [s.subject_id for s in found] == subjects
    assert all(set(s.images) == {"t1", "t2"} and s.mask is not None for s in found)


def test_ixi_phantom_subjects_are_healthy_and_distinct(ixi_root):
    subjects = ixi.find_subjects(ixi_root)
    masks = []
    for files in subjects:
        data = ixi.load_subject(files)
        mask = np.asarray(nib.load(files.mask).dataobj)
        assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) == {0, 1}
        np.testing.assert_array_equal(data["brain"], data["t1"] > 0)  # the generator's brain
        masks.append(data["brain"])
    for i in range(len(masks)):
        for j in range(i):
            assert not np.array_equal(masks[i], masks[j])
    # Healthy draws come from their own stream: other anatomy than the tumour case of the same index.
    for i, brain in enumerate(masks):
        assert not np.array_equal(brain, phantom.generate_case(i, 0, SPACING)["t1"] > 0)
    # No lesion: the healthy generator paints none, and the files are exactly what it returns.
    for i, files in enumerate(subjects):
        case = phantom.generate_case(phantom_ixi.HEALTHY_INDEX_OFFSET + i, 0, SPACING, healthy=True)
        assert not case["seg"].any()
        np.testing.assert_array_equal(ixi.load_subject(files)["t2"], case["t2"])


def test_ixi_phantom_deterministic_by_seed(ixi_root, tmp_path):
    again = phantom_ixi.write_ixi_dataset(tmp_path / "b", 4, seed=0, spacing_mm=SPACING, progress=False)
    other = phantom_ixi.write_ixi_dataset(tmp_path / "c", 4, seed=1, spacing_mm=SPACING, progress=False)
    a, b, c = _arrays(ixi_root), _arrays(again), _arrays(other)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    t1 = sorted(n for n in a if n.endswith("-T1.nii.gz"))[0]
    t1_other = sorted(n for n in c if n.endswith("-T1.nii.gz"))[0]
    assert not np.array_equal(a[t1], c[t1_other])


def test_ensure_ixi_dataset_cached(tmp_path):
    path = phantom_ixi.ensure_ixi_dataset(
        tmp_path, num_subjects=2, seed=0, spacing_mm=SPACING, progress=False
    )
    assert path == tmp_path / f"phantom-ixi-n2-s0-4mm-v{phantom.PHANTOM_VERSION}"
    marker = path / "phantom_ixi.json"
    stamp = marker.stat().st_mtime_ns
    assert phantom_ixi.ensure_ixi_dataset(tmp_path, 2, 0, SPACING, progress=False) == path
    assert marker.stat().st_mtime_ns == stamp  # not regenerated
    assert len(ixi.find_subjects(path)) == 2


# --- preprocess --------------------------------------------------------------------------------


def _ellipsoid(shape, centre, radii):
    grid = np.indices(shape, dtype=np.float64)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def test_preprocess_scaling_and_shapes():
    rng = np.random.default_rng(0)
    shape = (20, 24, 18)
    brain = _ellipsoid(shape, (9.0, 12.0, 7.0), (6.0, 8.0, 5.0))
    lo = np.array([np.nonzero(brain)[a].min() for a in range(3)])
    hi = np.array([np.nonzero(brain)[a].max() for a in range(3)])
    t2 = rng.normal(500, 100, shape).astype(np.float32) * brain
    t1 = rng.gamma(2.0, 100.0, shape).astype(np.float32) * brain
    crop = tuple(int(v) for v in hi - lo + 1)  # the grid of the crop: resampling is the identity
    image, out_brain, label, _ = anomaly_data.preprocess({"t2": t2, "t1": t1}, brain, crop)
    assert label is None
    assert image.shape == (crop[2], crop[0], crop[1], 2) and image.dtype == np.float32
    assert out_brain.shape == image.shape[:3] and out_brain.dtype == bool
    box = tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))
    np.testing.assert_array_equal(anomaly_data.to_nifti_order(out_brain), brain[box])
    assert not image[~out_brain].any()  # 0 outside the brain
    for k, source in enumerate((t2, t1)):  # channel order = key order of `images`
        p1, p99 = np.percentile(source[brain], [1, 99])
        expected = np.clip((source[box] - p1) / (p99 - p1), 0, 1) * brain[box]
        np.testing.assert_allclose(anomaly_data.to_nifti_order(image[..., k]), expected, atol=1e-5)
        inside = image[..., k][out_brain]
        assert inside.min() == 0.0 and inside.max() == 1.0
        assert np.mean(inside == 0.0) == pytest.approx(0.01, abs=0.01)
        assert np.mean(inside == 1.0) == pytest.approx(0.01, abs=0.01)


def test_preprocess_affine_and_label_follow_the_anatomy():
    shape = (30, 26, 20)
    brain = _ellipsoid(shape, (15.0, 12.0, 10.0), (11.0, 9.0, 7.0))
    lesion = _ellipsoid(shape, (21.0, 9.0, 12.0), (3.0, 3.0, 2.5)) & brain
    image = np.where(brain, 100.0, 0.0) + 300.0 * lesion
    image += np.random.default_rng(1).normal(0, 5, shape) * brain
    # Axes permuted and flipped, anisotropic spacing: a swapped axis order cannot pass.
    affine = np.array([[0.0, -2.0, 0.0, 40.0], [1.5, 0.0, 0.0, -30.0], [0.0, 0.0, 3.0, -12.0], [0, 0, 0, 1]])
    grid = (16, 12, 8)
    out, out_brain, label, new_affine = anomaly_data.preprocess(
        {"t1": image}, brain, grid, label=lesion, affine=affine
    )
    assert out.shape == (8, 16, 12, 1) and label.shape == (8, 16, 12) and label.dtype == bool
    nz = np.nonzero(brain)
    lo = np.array([a.min() for a in nz], float)
    hi = np.array([a.max() for a in nz], float)
    world = lambda aff, ijk: aff[:3, :3] @ np.asarray(ijk, float) + aff[:3, 3]  # noqa: E731
    # The output grid spans exactly the brain's bounding box: outer voxel corners coincide.
    np.testing.assert_allclose(world(new_affine, [-0.5] * 3), world(affine, lo - 0.5), atol=1e-9)
    np.testing.assert_allclose(world(new_affine, np.array(grid) - 0.5), world(affine, hi + 0.5), atol=1e-9)
    # The lesion lands where the bright blob is, and maps back to its world position.
    label_xyz = anomaly_data.to_nifti_order(label)
    bright = anomaly_data.to_nifti_order(out[..., 0]) > 0.6
    assert label_xyz.any() and (label_xyz & bright).sum() >= 0.7 * label_xyz.sum()
    centre_out = world(new_affine, np.argwhere(label_xyz).mean(0))
    centre_in = world(affine, np.argwhere(lesion).mean(0))
    voxel = np.abs(new_affine[:3, :3]).sum(0).max()
    assert np.linalg.norm(centre_out - centre_in) < voxel


def test_to_nifti_order():
    vol = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # [D, H, W]
    out = anomaly_data.to_nifti_order(vol)
    assert out.shape == (3, 4, 2) and out[2, 1, 0] == vol[0, 2, 1]


# --- splits ------------------------------------------------------------------------------------


def _config(tmp_path):
    c = ml_collections.ConfigDict()
    c.data = d = ml_collections.ConfigDict()
    d.root = None
    d.cache_dir = str(tmp_path / "cache")
    d.phantom_cases = 10
    d.phantom_seed = 0
    d.phantom_spacing_mm = SPACING
    d.split_fractions = (0.4, 0.3, 0.3)
    d.split_seed = 0
    d.tumour_split_fractions = (0.0, 0.5, 0.5)
    d.available = ""
    d.sequences = ("t1", "t2")
    d.grid = (16, 16, 8)
    d.healthy_root = None
    d.healthy_subjects = 6
    d.mask_suffix = "mask"
    return c


@pytest.fixture(scope="module")
def splits_and_config(tmp_path_factory):
    config = _config(tmp_path_factory.mktemp("splits"))
    return anomaly_data.load_anomaly_splits(config, progress=False), config


def test_healthy_splits_disjoint_by_subject(splits_and_config):
    splits, config = splits_and_config
    assert set(splits) == {"train", "val", "test", "val_tumour", "test_tumour"}
    ids = [{v.case_id for v in splits[name]} for name in ("train", "val", "test")]
    assert all(ids) and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    root = phantom_ixi.ensure_ixi_dataset(sources.cache_dir(config), 6, 0, SPACING, progress=False)
    assert set().union(*ids) == {s.subject_id for s in ixi.find_subjects(root)}
    for name in ("train", "val", "test"):
        for v in splits[name]:
            assert v.label is None and v.case_id.startswith("IXI")
            assert v.image.shape == (8, 16, 16, 2) and v.image.dtype == np.float32
            assert v.brain.shape == (8, 16, 16) and v.brain.dtype == bool
            assert 0.0 <= v.image.min() and v.image.max() <= 1.0 and v.affine.shape == (4, 4)


def test_tumour_splits_only_cases_with_tumour(splits_and_config):
    splits, config = splits_and_config
    found = brats.find_cases(sources.dataset_root(config, progress=False), require_seg=True)
    cases = case_splits.split_cases(found, (0.0, 0.5, 0.5), seed=0)
    assert not cases["train"]  # no detector trains on tumour cases: all of them evaluate
    for name in ("val", "test"):
        with_tumour = [c.case_id for c in cases[name] if not phantom.tumour_free(int(c.case_id[-5:]), 0)]
        assert [v.case_id for v in splits[f"{name}_tumour"]] == with_tumour
    tumour = splits["val_tumour"] + splits["test_tumour"]
    assert tumour and len(tumour) < len(cases["val"]) + len(cases["test"])  # a tumour-free case was skipped
    # The lesions are where T2 is bright (pooled: one small faint lesion at 16 px may not be).
    lesion = np.concatenate([v.image[..., 1][v.label] for v in tumour])
    rest = np.concatenate([v.image[..., 1][v.brain & ~v.label] for v in tumour])
    assert lesion.mean() > rest.mean()
    for v in tumour:
        assert v.label.shape == v.brain.shape == (8, 16, 16) and v.label.any()
        assert not (v.label & ~v.brain).any()
        source = brats.load_case(next(c for c in cases["val"] + cases["test"] if c.case_id == v.case_id))
        seg_world = source.affine[:3, :3] @ np.argwhere(source.seg > 0).mean(0) + source.affine[:3, 3]
        label_xyz = np.argwhere(anomaly_data.to_nifti_order(v.label)).mean(0)
        label_world = v.affine[:3, :3] @ label_xyz + v.affine[:3, 3]
        assert np.linalg.norm(label_world - seg_world) < 2 * np.abs(v.affine[:3, :3]).sum(0).max()


def test_splits_are_cached(splits_and_config, monkeypatch):
    splits, config = splits_and_config
    assert list((sources.cache_dir(config) / "anomaly").rglob("*.npz"))

    def fail(*args, **kwargs):
        raise AssertionError("preprocessed again instead of reading the cache")

    monkeypatch.setattr(anomaly_data, "preprocess", fail)
    again = anomaly_data.load_anomaly_splits(config, progress=False)
    for name, volumes in splits.items():
        assert [v.case_id for v in again[name]] == [v.case_id for v in volumes]
        for a, b in zip(volumes, again[name], strict=True):
            np.testing.assert_array_equal(a.image, b.image)
            np.testing.assert_array_equal(a.brain, b.brain)
            np.testing.assert_allclose(a.affine, b.affine)
            assert (a.label is None) == (b.label is None)


# --- slices ------------------------------------------------------------------------------------


def test_volumes_to_slices_drops_near_empty_slices():
    brain = np.zeros((4, 10, 10), bool)
    brain[1, 0, 0] = True  # 1 % of the slice: dropped at 5 %
    brain[2, :5, :] = True  # 50 %
    brain[3] = True
    image = np.random.default_rng(0).random((4, 10, 10, 2)).astype(np.float32)
    label = np.zeros_like(brain)
    label[3, 4:6, 4:6] = True
    healthy = anomaly_data.AnomalyVolume("IXI001-Guys-1000", image, brain, None, np.eye(4), None)
    tumour = anomaly_data.AnomalyVolume("BraTS2021_00000", image, brain, label, np.eye(4), None)
    out = anomaly_data.volumes_to_slices([healthy, tumour], min_brain_fraction=0.05)
    assert out["image"].shape == (4, 10, 10, 2) and out["image"].dtype == np.float32
    assert out["brain"].shape == out["label"].shape == (4, 10, 10, 1)
    assert out["brain"].dtype == out["label"].dtype == np.float32
    assert out["case"].dtype == out["z"].dtype == np.int32
    assert out["case"].tolist() == [0, 0, 1, 1] and out["z"].tolist() == [2, 3, 2, 3]
    np.testing.assert_array_equal(out["image"][1], image[3])
    assert not out["label"][:2].any() and out["label"][3].sum() == 4
    np.testing.assert_array_equal(out["brain"][0, ..., 0], brain[2])


IXI_REAL = pathlib.Path(__file__).resolve().parents[2] / "shared" / "real" / "ixi-one-subject"


@pytest.mark.parametrize("mode", ["first", "1mm"])
def test_real_ixi_t1_and_t2_come_onto_one_grid(mode):
    require_real_data(IXI_REAL)
    (subject,) = ixi.find_subjects(IXI_REAL)  # no mask files: the brain comes from the skull-stripped data
    assert subject.mask is None
    with pytest.raises(DataError, match=r"IXI002-Guys-0828-T2.nii.gz: shape .*data.resample=first or 1mm"):
        ixi.load_subject(subject)
    data = ixi.load_subject(subject, resample=mode)
    assert data["t1"].shape == data["t2"].shape == data["brain"].shape
    assert nib.aff2axcodes(data["affine"]) == ("R", "A", "S")  # the third axis is axial
    if mode == "1mm":
        np.testing.assert_allclose(np.sqrt((data["affine"][:3, :3] ** 2).sum(axis=0)), 1.0, atol=0.02)
    # Aligned by the affines: the two skull-stripped brains overlap (unaligned grids would not).
    t1, t2 = data["t1"] > 0, data["t2"] > 0
    assert 2 * (t1 & t2).sum() / (t1.sum() + t2.sum()) > 0.9
    np.testing.assert_array_equal(data["brain"], t1 & t2)


# --- healthy slices of tumour cases ------------------------------------------------------------


def test_brats_healthy_source_trains_on_tumour_free_slices_of_the_training_cases(tmp_path):
    config = _config(tmp_path)
    d = config.data
    d.healthy_source, d.healthy_margin_mm = "brats", 8.0
    d.folds, d.fold, d.fold_val_cases = 3, 1, 2
    d.sequences = ("t2", "flair")  # FLAIR: the tumour cases have it; IXI has none
    splits = anomaly_data.load_anomaly_splits(config, progress=False)
    found = brats.find_cases(sources.dataset_root(config, progress=False), require_seg=True)
    folds = case_splits.fold_splits(found, 3, 1, seed=0, val_patients=2)  # the segmenters' folds
    for name in ("train", "val", "test"):
        assert {v.case_id for v in splits[name]} <= {c.case_id for c in folds[name]}
        for v in splits[name]:
            assert len(v.slices) and not v.label[v.slices].any()  # no tumour voxel on a healthy slice
            assert v.image.shape[-1] == 2
    assert splits["train"] and splits["test"]
    assert {v.case_id for v in splits["test_tumour"]} == {
        c.case_id for c in folds["test"] if not phantom.tumour_free(int(c.case_id[-5:]), 0)
    }
    assert all(v.slices is None for v in splits["val_tumour"] + splits["test_tumour"])
    train = anomaly_data.volumes_to_slices(splits["train"], 0.05)
    assert len(train["z"]) <= sum(len(v.slices) for v in splits["train"]) and not train["label"].any()
    d.healthy_source = "ixi"  # IXI holds no FLAIR: one line that says so
    with pytest.raises(DataError, match="IXI has no FLAIR"):
        anomaly_data.load_anomaly_splits(config, progress=False)
