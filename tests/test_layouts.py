"""The layouts users have: MSD (4D images), nnU-Net raw (one file per channel, region-based labels), a custom
JSON layout (the shared BraTS 2013 cases), label conventions, and intensities whose background is not 0."""

from __future__ import annotations

import json
import pathlib

import nibabel as nib
import numpy as np
import pytest
from conftest import require_real_data
from test_brats_reader import AFFINE, write

from data_pipelines import brats, conventions, layouts, slices
from data_pipelines.brain import background_value, brain_mask
from data_pipelines.brats import MODALITIES, DataError
from diffseg_jax import outputs

ROOT = pathlib.Path(__file__).resolve().parents[1]
BRATS2013 = ROOT.parent / "shared" / "real" / "brats2013-two-sequences"
BRATS2018 = ROOT.parent / "shared" / "real" / "brats2018-twelve"
BRATS2013_LAYOUT = ROOT / "configs" / "layouts" / "brats2013_two_sequences.json"
SHAPE = (10, 9, 7)
# Label 1 = WT only, 2 = WT + TC, 3 = all three, in the MSD convention.
MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


def _labels() -> np.ndarray:
    seg = np.zeros(SHAPE, np.uint8)
    seg[2:7, 2:7, 1:6] = 1
    seg[3:6, 3:6, 2:5] = 2
    seg[4, 4, 3] = 3
    return seg


def _channel(index: int) -> np.ndarray:
    return (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 17 + 100 * (index + 1)).astype(np.int16)


def make_msd(root: pathlib.Path, case_ids=("BRATS_001", "BRATS_002")) -> pathlib.Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    modality = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
    (root / "dataset.json").write_text(
        json.dumps({"name": "BRATS", "modality": modality, "labels": MSD_LABELS})
    )
    for case_id in case_ids:
        write(root / "imagesTr" / f"{case_id}.nii.gz", np.stack([_channel(i) for i in range(4)], axis=-1))
        write(root / "labelsTr" / f"{case_id}.nii.gz", _labels())
        (root / "imagesTr" / f"._{case_id}.nii.gz").write_bytes(b"\0")  # macOS resource forks in the tar
    return root


def make_nnunet(root: pathlib.Path, case_ids=("BraTS2021_00000", "BraTS2021_00002")) -> pathlib.Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    spec = {
        "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
        "regions_class_order": [1, 2, 3],
        "numTraining": len(case_ids),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(spec))
    for case_id in case_ids:
        for i in range(4):
            write(root / "imagesTr" / f"{case_id}_{i:04d}.nii.gz", _channel(i))
        write(root / "labelsTr" / f"{case_id}.nii.gz", _labels())
    return root


def test_msd_reads_4d_images_in_the_dataset_json_order(tmp_path):
    cases = layouts.find_cases(make_msd(tmp_path), require_seg=True)
    assert [c.case_id for c in cases] == ["BRATS_001", "BRATS_002"] and cases[0].scheme == "msd"
    volume = brats.load_case(cases[0])
    order = {"flair": 0, "t1": 1, "t1ce": 2, "t2": 3}  # dataset.json: FLAIR, T1w, t1gd, T2w
    for k, modality in enumerate(MODALITIES):
        np.testing.assert_array_equal(volume.images[..., k], _channel(order[modality]))
    regions = brats.labels_to_regions(volume.seg, volume.convention)
    np.testing.assert_array_equal(regions[..., 0], _labels() >= 1)  # oedema, core, enhancing
    np.testing.assert_array_equal(regions[..., 1], _labels() >= 2)  # non-enhancing + enhancing
    np.testing.assert_array_equal(regions[..., 2], _labels() == 3)


def test_nnunet_per_channel_files_and_region_based_labels(tmp_path):
    cases = layouts.find_cases(make_nnunet(tmp_path), require_seg=True, available=("t1ce", "flair"))
    assert [c.case_id for c in cases] == ["BraTS2021_00000", "BraTS2021_00002"] and cases[
        0
    ].scheme == "nnunet"
    assert cases[0].images["flair"].name == "BraTS2021_00000_0003.nii.gz"
    volume = brats.load_case(cases[0])
    assert volume.available == (False, True, False, True)
    np.testing.assert_array_equal(volume.images[..., 1], _channel(1))
    np.testing.assert_array_equal(volume.images[..., 0], 0)  # not asked for: a zero channel
    convention = conventions.resolve(volume.convention)
    assert (convention.wt, convention.tc, convention.et) == ((1, 2, 3), (2, 3), (3,))


@pytest.mark.parametrize("make", [make_msd, make_nnunet])
def test_predictions_go_back_in_the_datasets_labels_grid_and_affine(tmp_path, make):
    case = layouts.find_cases(make(tmp_path / "data"), require_seg=True)[0]
    volume = brats.load_case(case)
    regions = brats.labels_to_regions(volume.seg, volume.convention)
    labels = brats.regions_to_labels(regions, volume.convention)
    np.testing.assert_array_equal(labels, _labels())  # the dataset's own label values come back
    path = outputs.save_nifti(labels, volume, tmp_path / "predictions" / f"{case.case_id}_seg.nii.gz")
    written = nib.load(path)
    assert written.shape == SHAPE
    np.testing.assert_allclose(written.affine, AFFINE)
    np.testing.assert_array_equal(np.asarray(written.dataobj), _labels())


def test_dataset_json_problems_are_one_line(tmp_path):
    root = make_msd(tmp_path)
    spec = json.loads((root / "dataset.json").read_text())
    spec["modality"]["3"] = "DWI"
    (root / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"dataset.json: has no t2 \(it has flair, t1, t1ce\)"):
        layouts.find_cases(root)
    # Without T2 the dataset still serves a model that uses the other three.
    assert len(layouts.find_cases(root, available=("t1", "t1ce", "flair"))) == 2


def test_conventions_from_label_names_and_regions():
    msd = conventions.from_label_names("msd", {n: int(v) for v, n in MSD_LABELS.items()})
    assert (msd.wt, msd.tc, msd.et, msd.write) == ((1, 2, 3), (2, 3), (3,), (1, 2, 3))
    b21 = conventions.from_label_names("b21", {"background": 0, "NCR": 1, "ED": 2, "ET": 4})
    assert (b21.wt, b21.tc, b21.et, b21.write) == ((1, 2, 4), (1, 4), (4,), (2, 1, 4))
    b13 = conventions.resolve("brats2013")
    assert b13.values == (0, 1, 2, 3, 4) and (b13.tc, b13.et) == ((1, 3, 4), (4,))
    np.testing.assert_array_equal(b13.regions(np.array([0, 1, 2, 3, 4]))[:, 1], [0, 1, 0, 1, 1])
    with pytest.raises(conventions.ConventionError, match="must nest"):
        conventions.from_regions("bad", {"WT": [1, 2], "TC": [3], "ET": [3]})


def test_custom_layout_file(tmp_path):
    layout = tmp_path / "layout.json"
    spec = {
        "sequences": {"FLAIR": "flair.nii.gz", "T1c": "t1c.nii.gz"},
        "label": "labels.nii.gz",
        "regions": {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]},
    }
    layout.write_text(json.dumps(spec))
    for name in ("patient_b", "patient_a"):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        write(folder / "flair.nii.gz", _channel(0))
        write(folder / "t1c.nii.gz", _channel(1))
        write(folder / "labels.nii.gz", _labels())
    (tmp_path / "data" / "docs").mkdir()  # a folder without the layout's files is not a case
    cases = layouts.find_cases(
        tmp_path / "data", layout=layout, available=("t1ce", "flair"), require_seg=True
    )
    assert [c.case_id for c in cases] == ["patient_a", "patient_b"]
    assert brats.load_case(cases[0]).available == (False, True, False, True)
    with pytest.raises(
        DataError, match=r"layout.json: has no t1, t2 \(it has flair, t1ce\); set data.available"
    ):
        layouts.find_cases(tmp_path / "data", layout=layout)
    spec["sequence"] = spec.pop("sequences")
    layout.write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"layout.json: unknown field\(s\) \['sequence'\]"):
        layouts.find_cases(tmp_path / "data", layout=layout)


def test_custom_layout_names_files_by_case(tmp_path):
    """`{case}` in a layout's file names stands for the case folder's name."""
    layout = tmp_path / "layout.json"
    spec = {
        "sequences": {"flair": "{case}_FLAIR_reg.nii.gz", "t1ce": "{case}_T1GD_reg.nii.gz"},
        "label": "{case}_labels.nii.gz",
        "convention": "brats2023",
        "brain_mask": "{case}_brainmask.nii.gz",
    }
    layout.write_text(json.dumps(spec))
    for i, name in enumerate(("UCSF-001", "UCSF-002")):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        write(folder / f"{name}_FLAIR_reg.nii.gz", _channel(i))
        write(folder / f"{name}_T1GD_reg.nii.gz", _channel(i + 1))
        write(folder / f"{name}_labels.nii.gz", _labels())
        write(folder / f"{name}_brainmask.nii.gz", np.ones(SHAPE, np.uint8))
    (tmp_path / "data" / "UCSF-001" / "UCSF-002_FLAIR_reg.nii.gz").write_bytes(b"")  # another case's name
    cases = layouts.find_cases(tmp_path / "data", layout=layout, available=("t1ce", "flair"))
    assert [c.case_id for c in cases] == ["UCSF-001", "UCSF-002"]
    second = cases[1]
    assert second.images["flair"].name == "UCSF-002_FLAIR_reg.nii.gz"
    assert (second.seg.name, second.brain_mask.name) == (
        "UCSF-002_labels.nii.gz",
        "UCSF-002_brainmask.nii.gz",
    )
    volume = brats.load_case(second)
    np.testing.assert_array_equal(volume.images[..., 3], _channel(1))
    assert volume.convention == "brats2023" and volume.brain.all()
    (tmp_path / "data" / "UCSF-002" / "UCSF-002_T1GD_reg.nii.gz").unlink()
    with pytest.raises(DataError, match=r"UCSF-002: missing t1ce \(expected UCSF-002_T1GD_reg.nii.gz\)"):
        layouts.find_cases(tmp_path / "data", layout=layout, available=("t1ce", "flair"))


def test_background_that_is_not_zero_is_not_brain():
    rng = np.random.default_rng(0)
    brain = np.zeros((12, 12, 8), bool)
    brain[3:9, 2:10, 2:6] = True
    flair = np.where(brain, rng.normal(0.0, 1.0, brain.shape), -2.75).astype(np.float32)  # z-scored
    images = np.zeros((*brain.shape, 4), np.float32)
    images[..., 3] = flair
    np.testing.assert_array_equal(brain_mask(images), brain)
    normed = slices.normalize(images, brain)
    assert abs(normed[..., 3][brain].mean()) < 1e-5 and abs(normed[..., 3][brain].std() - 1) < 1e-3
    assert not normed[~brain].any() and not normed[..., :3].any()  # missing sequences stay absent


def test_shared_brats2013_cases_through_the_layout_file():
    require_real_data(BRATS2013)
    cases = layouts.find_cases(
        BRATS2013, layout=BRATS2013_LAYOUT, available=("t1ce", "flair"), require_seg=True
    )
    assert [c.case_id for c in cases] == [f"brats_2013_pat000{i}_1" for i in (3, 4, 5, 6)]
    volume = brats.load_case(cases[0])
    assert volume.images.shape == (240, 240, 155, 4) and volume.convention == "brats2013"
    mask = np.asarray(nib.load(cases[0].brain_mask).dataobj) > 0.5
    np.testing.assert_array_equal(volume.brain, mask)  # from the mask file
    flair = volume.images[..., 3]
    assert background_value(flair) < -1  # z-scored: the background is a negative constant
    np.testing.assert_array_equal(brain_mask(volume.images), mask)  # the data agree with the file
    assert set(np.unique(volume.seg)) == {0, 1, 2, 3, 4}
    normed = slices.normalize(volume.images, volume.brain)
    assert abs(normed[..., 3][volume.brain].mean()) < 0.05 and not normed[~volume.brain].any()


def test_shared_brats2018_cases_as_the_release_names_them():
    require_real_data(BRATS2018)
    cases = layouts.find_cases(BRATS2018, require_seg=True)
    assert len(cases) == 12 and all(c.case_id.startswith("Brats18_") for c in cases)
    assert {c.convention for c in cases} == {"brats2021"} and all(
        set(c.images) == set(MODALITIES) for c in cases
    )
    case = next(c for c in cases if c.case_id == "Brats18_2013_20_1")
    assert case.images["t1ce"].name == "Brats18_2013_20_1_t1ce.nii.gz"
    assert case.seg.name == "Brats18_2013_20_1_seg.nii.gz"
    seg = np.asarray(nib.load(case.seg).dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2, 4}  # passes the 2017-2021 label check when loaded
    assert brats.check_headers(case)  # four sequences and labels on one grid
