"""Tests for the synthetic BraTS-layout phantom (coarse 4 mm grid to stay fast)."""

import json
import os
import pathlib

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from data_pipelines import phantom, phantom_mimics

SPACING = 4.0
KEYS = ("t1", "t1ce", "t2", "flair", "seg")


def _first_index(pred, limit: int = 64) -> int:
    for i in range(limit):
        if pred(i):
            return i
    raise AssertionError("no matching case index")


def test_determinism_by_seed():
    a = phantom.generate_case(2, seed=0, spacing_mm=SPACING)
    b = phantom.generate_case(2, seed=0, spacing_mm=SPACING)
    c = phantom.generate_case(2, seed=1, spacing_mm=SPACING)
    for k in KEYS:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["t1"], c["t1"])
    assert a["t1"].dtype == np.float32 and a["seg"].dtype == np.uint8
    assert a["t1"].shape == a["seg"].shape == (50, 59, 48)


def test_images_and_labels():
    case = phantom.generate_case(0, spacing_mm=SPACING)
    assert set(np.unique(case["seg"]).tolist()) <= {0, 1, 2, 4}
    brain = case["t1"] > 0
    for k in phantom.SEQUENCES:
        img = case[k]
        assert np.all(img >= 0) and np.all(img <= np.iinfo(np.int16).max)
        np.testing.assert_array_equal(img, np.rint(img))  # int16-exact on disk
        assert np.all((img > 0) == brain)  # skull-stripped: background 0 in every sequence
    assert not np.any(case["seg"][~brain])


def test_tissue_contrast_ordering():
    means = {k: {"csf": [], "gm": [], "wm": []} for k in phantom.SEQUENCES}
    for i in range(3):
        case = phantom.generate_case(i, spacing_mm=SPACING, return_tissue=True)
        healthy = case["seg"] == 0
        for t in ("csf", "gm", "wm"):
            sel = (case[t] > 0.7) & healthy
            assert sel.sum() > 10
            for k in phantom.SEQUENCES:
                means[k][t].append(case[k][sel].mean() / case[k][case[k] > 0].mean())
    m = {k: {t: np.mean(v) for t, v in d.items()} for k, d in means.items()}
    assert m["t1"]["wm"] > m["t1"]["gm"] > m["t1"]["csf"]
    assert m["t1ce"]["wm"] > m["t1ce"]["gm"] > m["t1ce"]["csf"]
    assert m["t2"]["csf"] > m["t2"]["gm"] > m["t2"]["wm"]
    assert m["flair"]["gm"] >= m["flair"]["wm"] > m["flair"]["csf"]


def test_lesion_intensities():
    def has_ncr_and_et(i: int) -> bool:
        seg = phantom.generate_case(i, spacing_mm=SPACING)["seg"]
        return (seg == 1).sum() >= 3 and (seg == 4).sum() >= 3

    case = phantom.generate_case(_first_index(has_ncr_and_et), spacing_mm=SPACING)
    seg = case["seg"]
    assert case["t1ce"][seg == 4].mean() > case["t1ce"][seg == 1].mean()
    healthy = (seg == 0) & (case["t1"] > 0)

    def rel(seq: str, label: int) -> float:
        return case[seq][seg == label].mean() / case[seq][healthy].mean()

    assert rel("t1ce", 4) > rel("t1", 4)  # enhancement is specific to T1ce
    assert rel("t1", 1) < 1.0 and rel("flair", 2) > 1.0 and rel("t2", 2) > 1.0


def test_every_oedema_is_identifiable_in_flair_in_version_2():
    """Subtle lesions stay subtle but visible: oedema must outshine healthy tissue and the bias field.

    A lesion fainter than the bias field's variation cannot be found by any model, so a phantom that makes
    one would put an unreachable ceiling on every Dice.
    """
    checked = 0
    for i in range(16):
        case = phantom.generate_case(i, spacing_mm=SPACING, version=2)
        seg, flair = case["seg"], case["flair"]
        if not (seg == 2).any():
            continue
        healthy = (seg == 0) & (flair > 0)
        assert np.mean(flair[seg == 2] > np.percentile(flair[healthy], 95)) > 0.9, f"case {i}"
        checked += 1
    assert checked >= 10


def test_oedema_stays_identifiable_among_the_mimics_of_version_3():
    """Version 3 fades the oedema towards its edge and adds FLAIR-bright non-tumour tissue, as real scans
    have; the oedema still stands out: its median above 85 % of healthy tissue in every case, and above the
    healthy 95th percentile in 90 % of its voxels in most cases."""
    clear = checked = 0
    for i in range(16):
        case = phantom.generate_case(i, spacing_mm=SPACING, version=3)
        seg, flair = case["seg"], case["flair"]
        if not (seg == 2).any():
            continue
        healthy = (seg == 0) & (flair > 0)
        assert np.median(flair[seg == 2]) > np.percentile(flair[healthy], 85), f"case {i}"
        clear += np.mean(flair[seg == 2] > np.percentile(flair[healthy], 95)) > 0.9
        checked += 1
    assert checked >= 10 and clear >= 0.75 * checked


def test_version_3_mimics_are_unlabelled_and_where_real_scans_have_them():
    two = phantom.generate_case(1, spacing_mm=SPACING, healthy=True, version=2, return_tissue=True)
    three = phantom.generate_case(1, spacing_mm=SPACING, healthy=True, version=3, return_tissue=True)
    assert not three["seg"].any()
    np.testing.assert_array_equal(two["csf"], three["csf"])  # the same subject, with the mimics painted on
    brain, csf, wm = three["brain"], three["csf"], three["wm"]
    vent = phantom_mimics.ventricles(csf, brain, SPACING)
    assert 10 < vent.sum() < 0.1 * brain.sum()
    rng = np.random.default_rng(0)
    rim = phantom_mimics.periventricular_rim(rng, vent, wm, SPACING)
    assert not rim[vent].any() and rim.max() > 0.3
    near = ndi.binary_dilation(vent) & ~vent
    far = ~ndi.binary_dilation(vent, iterations=4) & brain
    assert rim[near].mean() > 0.1 and not rim[far].any()
    plexus = phantom_mimics.choroid_plexus(rng, vent, SPACING)
    assert plexus.max() > 0.5 and not plexus[~vent].any()
    tubes = phantom_mimics.vessels(rng, brain, SPACING)
    assert 0 < (tubes > 0.5).sum() < 0.05 * brain.sum() and not tubes[~brain].any()
    # T1c brighter on the vessels and the brain's edge than without the mimics
    edge = brain & ~ndi.binary_erosion(brain)
    assert three["t1ce"][edge].mean() > two["t1ce"][edge].mean()


def test_tumour_free_fraction_and_case():
    flags = [phantom.tumour_free(i, seed=0) for i in range(8 * 20)]
    assert sum(flags) == 20  # exactly one per block of 8
    free = _first_index(phantom.tumour_free)
    assert not phantom.generate_case(free, spacing_mm=SPACING)["seg"].any()
    sick = _first_index(lambda i: not phantom.tumour_free(i))
    assert phantom.generate_case(sick, spacing_mm=SPACING)["seg"].any()


def test_write_dataset_layout(tmp_path: pathlib.Path):
    root = phantom.write_dataset(tmp_path / "ds", num_cases=3, seed=0, spacing_mm=SPACING, progress=False)
    assert sorted(p.name for p in root.iterdir()) == [
        "BraTS2021_00000",
        "BraTS2021_00001",
        "BraTS2021_00002",
        "phantom.json",
    ]
    meta = json.loads((root / "phantom.json").read_text())
    assert meta["num_cases"] == 3 and meta["seed"] == 0 and meta["spacing_mm"] == SPACING
    assert meta["version"] == phantom.PHANTOM_VERSION
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temp dirs left behind
    for i in range(3):
        cid = f"BraTS2021_{i:05d}"
        files = sorted(p.name for p in (root / cid).iterdir())
        assert files == sorted(f"{cid}_{k}.nii.gz" for k in KEYS)
        imgs = {k: nib.load(root / cid / f"{cid}_{k}.nii.gz") for k in KEYS}
        ref = phantom.generate_case(i, spacing_mm=SPACING)
        for k, img in imgs.items():
            assert img.shape == imgs["t1"].shape
            np.testing.assert_array_equal(img.affine, imgs["t1"].affine)
            np.testing.assert_array_equal(np.asarray(img.dataobj), ref[k])
        assert imgs["seg"].get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(imgs["seg"].dataobj)).tolist()) <= {0, 1, 2, 4}


def test_ensure_dataset_reuses(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch):
    path = phantom.ensure_dataset(tmp_path, num_cases=2, seed=3, spacing_mm=SPACING, progress=False)
    assert path == tmp_path / f"phantom-n2-s3-4mm-v{phantom.PHANTOM_VERSION}"
    marker = path / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz"
    mtimes = (marker.stat().st_mtime_ns, (path / "phantom.json").stat().st_mtime_ns)

    def boom(*args, **kwargs):
        raise AssertionError("dataset should have been reused")

    monkeypatch.setattr(phantom, "write_dataset", boom)
    again = phantom.ensure_dataset(tmp_path, num_cases=2, seed=3, spacing_mm=SPACING, progress=False)
    assert again == path
    assert (marker.stat().st_mtime_ns, (path / "phantom.json").stat().st_mtime_ns) == mtimes


def test_interrupted_generation_is_not_complete(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch):
    name = "phantom-n2-s0-4mm"
    # A killed run leaves a hidden temp dir; a crash between swap and json leaves no marker.
    leftover = tmp_path / f".{name}.tmp-dead"
    (leftover / "BraTS2021_00000").mkdir(parents=True)
    (tmp_path / name / "BraTS2021_00000").mkdir(parents=True)
    path = phantom.ensure_dataset(tmp_path, num_cases=2, spacing_mm=SPACING, progress=False)
    assert json.loads((path / "phantom.json").read_text())["num_cases"] == 2
    assert len(list((path / "BraTS2021_00001").iterdir())) == 5

    # Interrupt during generation: nothing half-written may appear under the final name.
    real = phantom.generate_case

    def interrupted(index: int, *args, **kwargs):
        if index == 1:
            raise KeyboardInterrupt
        return real(index, *args, **kwargs)

    monkeypatch.setattr(phantom, "generate_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        phantom.ensure_dataset(tmp_path, num_cases=3, spacing_mm=SPACING, progress=False)
    assert not (tmp_path / "phantom-n3-s0-4mm").exists()
    assert not list(tmp_path.glob(".phantom-n3-s0-4mm.tmp-*"))


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path):
    monkeypatch.setenv("DIFFSEG_CACHE", str(tmp_path / "c"))
    assert phantom.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DIFFSEG_CACHE")
    assert phantom.default_cache_dir() == pathlib.Path(os.path.expanduser("~/.cache/diffseg_jax"))
