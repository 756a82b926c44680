"""Tests for the BraTS case reader on tiny synthetic NIfTI folders and the real case if present."""

from __future__ import annotations

import gzip
import pathlib

import nibabel as nib
import numpy as np
import pytest
from conftest import require_real_data

from data_pipelines.brats import (
    LABEL_VALUES,
    MODALITIES,
    DataError,
    find_cases,
    labels_to_regions,
    load_case,
    regions_to_labels,
)
from diffseg_jax.outputs import save_nifti

SHAPE = (8, 8, 6)
AFFINE = np.array([[-1.0, 0, 0, 7], [0, -1.0, 0, 7], [0, 0, 1.0, 0], [0, 0, 0, 1]])
REAL_ROOT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "real"
REAL_CASE = REAL_ROOT / "BraTS-GLI-00001-000"

SUFFIXES = {
    "brats": ("_", dict(zip(MODALITIES, MODALITIES, strict=True))),
    "brats2023": ("-", dict(zip(MODALITIES, ("t1n", "t1c", "t2w", "t2f"), strict=True))),
}


def scheme_of(case_id: str) -> str:
    return "brats2023" if case_id.startswith("BraTS-") else "brats"


def write(path: pathlib.Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> pathlib.Path:
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms((1.0, 1.0, 1.5)[: data.ndim] + (1.0,) * max(0, data.ndim - 3))
    nib.save(img, str(path))
    return path


def make_case(
    root: pathlib.Path,
    case_id: str,
    *,
    modalities: tuple[str, ...] = MODALITIES,
    seg: bool = True,
    ext: str = ".nii.gz",
    seed: int = 0,
) -> pathlib.Path:
    """Write one tiny case folder in the naming scheme implied by its id."""
    sep, suffixes = SUFFIXES[scheme_of(case_id)]
    folder = root / case_id
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, m in enumerate(modalities):
        data = (rng.integers(0, 1000, SHAPE) + 1000 * i).astype(np.int16)
        write(folder / f"{case_id}{sep}{suffixes[m]}{ext}", data)
    if seg:
        labels = np.zeros(SHAPE, np.uint8)
        et = 3 if scheme_of(case_id) == "brats2023" else 4
        labels[2:6, 2:6, 1:5] = 2
        labels[3:5, 3:5, 2:4] = 1
        labels[4, 4, 3] = et
        write(folder / f"{case_id}{sep}seg{ext}", labels)
    return folder


def file_of(folder: pathlib.Path, kind: str) -> pathlib.Path:
    case_id = folder.name
    sep, suffixes = SUFFIXES[scheme_of(case_id)]
    return folder / f"{case_id}{sep}{suffixes.get(kind, kind)}.nii.gz"


# ----------------------------------------------------------------------------- discovery


def test_find_cases_all_schemes(tmp_path: pathlib.Path) -> None:
    make_case(tmp_path, "BraTS20_Training_001")
    make_case(tmp_path, "BraTS20_Validation_002", seg=False)
    make_case(tmp_path, "BraTS2021_00000", ext=".nii")
    make_case(tmp_path, "BraTS-GLI-00001-000")
    make_case(tmp_path, "BraTS-MEN-00012-001", seg=False)
    (tmp_path / ".DS_Store").write_bytes(b"\0\1")
    (tmp_path / "phantom.json").write_text("{}")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "BraTS2021_00000" / ".DS_Store").write_bytes(b"x")

    cases = find_cases(tmp_path)
    by_id = {c.case_id: c for c in cases}
    assert [c.case_id for c in cases] == sorted(by_id)
    assert len(set(cases)) == 5  # hashable despite the read-only images mapping
    assert len(cases) == 5
    expect = {
        "BraTS20_Training_001": ("brats", "brats2021", "BraTS20_Training_001", True),
        "BraTS20_Validation_002": ("brats", "brats2021", "BraTS20_Validation_002", False),
        "BraTS2021_00000": ("brats", "brats2021", "BraTS2021_00000", True),
        "BraTS-GLI-00001-000": ("brats2023", "brats2023", "BraTS-GLI-00001", True),
        "BraTS-MEN-00012-001": ("brats2023", "brats2023", "BraTS-MEN-00012", False),
    }
    for case_id, (scheme, convention, patient, has_seg) in expect.items():
        c = by_id[case_id]
        assert (c.scheme, c.convention, c.patient_id) == (scheme, convention, patient)
        assert (c.seg is not None) == has_seg
        assert set(c.images) == set(MODALITIES)
        assert c.folder == tmp_path / case_id
    gli = by_id["BraTS-GLI-00001-000"].images
    assert gli["t1"].name == "BraTS-GLI-00001-000-t1n.nii.gz"
    assert gli["t1ce"].name == "BraTS-GLI-00001-000-t1c.nii.gz"
    assert gli["t2"].name == "BraTS-GLI-00001-000-t2w.nii.gz"
    assert gli["flair"].name == "BraTS-GLI-00001-000-t2f.nii.gz"
    assert by_id["BraTS2021_00000"].images["t1ce"].name == "BraTS2021_00000_t1ce.nii"


def write_named_case(root: pathlib.Path, case_id: str, tags: dict[str, str], sep: str, et: int) -> None:
    """A case whose files are <case><sep><tag>.nii.gz, with a segmentation whose enhancing label is `et`."""
    folder = root / case_id
    folder.mkdir(parents=True)
    for i, tag in enumerate(tags.values()):
        write(folder / f"{case_id}{sep}{tag}.nii.gz", np.full(SHAPE, 100 * (i + 1), np.int16))
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:6, 2:6, 1:5], labels[3:5, 3:5, 2:4], labels[4, 4, 3] = 2, 1, et
    write(folder / f"{case_id}{sep}seg.nii.gz", labels)


@pytest.mark.parametrize(
    "case_id, tags, sep, convention",
    [
        ("Brats17_TCIA_105_1", ("t1", "t1ce", "t2", "flair"), "_", "brats2021"),  # BraTS 2017
        ("Brats18_2013_2_1", ("t1", "t1ce", "t2", "flair"), "_", "brats2021"),  # BraTS 2018
        ("BraTS19_CBICA_AAB_1", ("t1", "t1ce", "t2", "flair"), "_", "brats2021"),  # BraTS 2019
        ("BraTS20_Training_369", ("t1", "t1ce", "t2", "flair"), "_", "brats2021"),  # BraTS 2020
        ("BraTS2021_01666", ("t1", "t1ce", "t2", "flair"), "_", "brats2021"),  # BraTS 2021
        ("BraTS-GLI-02000-101", ("t1n", "t1c", "t2w", "t2f"), "-", "brats2023"),  # BraTS 2023-2025
        ("BraTS-SSA-00002-000", ("t1n", "t1c", "t2w", "t2f"), "-", "brats2023"),
        ("patient07", ("T1", "T1c", "T2", "FLAIR"), "_", "brats2021"),  # the user's own ids and spellings
        ("UPENN-GBM-00002_11", ("T1", "T1GD", "T2", "FLAIR"), "_", "brats2021"),
        ("site3-0042", ("t1n", "t1c", "t2w", "t2f"), "-", "brats2023"),  # 2023 spellings, own id
    ],
)
def test_every_release_naming(tmp_path: pathlib.Path, case_id, tags, sep, convention) -> None:
    et = 3 if convention == "brats2023" else 4
    write_named_case(tmp_path, case_id, dict(zip(MODALITIES, tags, strict=True)), sep, et)
    (cases,) = [find_cases(tmp_path)]
    assert [c.case_id for c in cases] == [case_id]
    case = cases[0]
    assert case.convention == convention
    assert {m: p.name for m, p in case.images.items()} == {
        m: f"{case_id}{sep}{tag}.nii.gz" for m, tag in zip(MODALITIES, tags, strict=True)
    }
    volume = load_case(case)
    # each sequence lands in its own channel (written as 100, 200, 300, 400), the labels in their regions
    assert [float(volume.images[0, 0, 0, c]) for c in range(4)] == [100.0, 200.0, 300.0, 400.0]
    regions = labels_to_regions(volume.seg, volume.convention)
    assert regions[..., 0].sum() == 64 and regions[..., 1].sum() == 8 and regions[..., 2].sum() == 1
    assert find_cases(tmp_path / case_id)[0].case_id == case_id  # the case folder itself as root


def test_release_convention_is_checked(tmp_path: pathlib.Path) -> None:
    """A 2018 case carrying 2023 labels (3 = enhancing) is refused, naming the file and the convention."""
    write_named_case(tmp_path, "Brats18_CBICA_AAP_1", dict(zip(MODALITIES, MODALITIES, strict=True)), "_", 3)
    with pytest.raises(DataError, match=r"Brats18_CBICA_AAP_1_seg.nii.gz: labels \{3\} not in"):
        load_case(find_cases(tmp_path)[0])


def test_nothing_found_says_what_was_looked_for(tmp_path: pathlib.Path) -> None:
    (tmp_path / "case1").mkdir()
    write(tmp_path / "case1" / "Flair_norm.nii.gz", np.zeros(SHAPE, np.int16))
    with pytest.raises(DataError) as err:
        find_cases(tmp_path)
    message = str(err.value)
    assert f"no BraTS cases found in {tmp_path}" in message and "data.layout" in message
    assert "<case>_<sequence>.nii.gz" in message and "t1n/t1c/t2w/t2f" in message and "\n" not in message


def test_two_files_for_one_sequence_are_refused(tmp_path: pathlib.Path) -> None:
    folder = make_case(tmp_path, "Brats18_TCIA10_628_1")
    write(folder / "Brats18_TCIA10_628_1_FLAIR.nii", np.zeros(SHAPE, np.int16))
    with pytest.raises(DataError, match=r"several files for flair"):
        find_cases(tmp_path)


def test_single_case_folder_root(tmp_path: pathlib.Path) -> None:
    folder = make_case(tmp_path, "BraTS-PED-00030-000")
    (folder / "phantom.json").write_text("{}")
    cases = find_cases(folder)
    assert [c.case_id for c in cases] == ["BraTS-PED-00030-000"]
    assert cases[0].folder == folder and cases[0].scheme == "brats2023"


def test_missing_modality_names_expected_file(tmp_path: pathlib.Path) -> None:
    make_case(tmp_path, "BraTS2021_00003", modalities=("t1", "t2", "flair"))
    with pytest.raises(DataError, match=r"BraTS2021_00003: missing t1ce") as err:
        find_cases(tmp_path)
    assert "BraTS2021_00003_t1ce.nii.gz" in str(err.value)
    assert "\n" not in str(err.value)


def test_available_excludes_missing_modality(tmp_path: pathlib.Path) -> None:
    make_case(tmp_path, "BraTS-GLI-00002-000", modalities=("t1", "t2", "flair"))
    (case,) = find_cases(tmp_path, available=("t1", "t2", "flair"))
    assert "t1ce" not in case.images
    vol = load_case(case)
    assert vol.available == (True, False, True, True)
    assert not vol.images[..., 1].any()
    assert vol.images[..., 0].any() and vol.images[..., 3].any()


def test_available_loads_only_requested(tmp_path: pathlib.Path) -> None:
    make_case(tmp_path, "BraTS2021_00004")
    (case,) = find_cases(tmp_path, available=["flair"])
    vol = load_case(case)
    assert vol.available == (False, False, False, True)
    assert not vol.images[..., :3].any()
    with pytest.raises(DataError, match="available"):
        find_cases(tmp_path, available=["t1", "dwi"])


def test_require_seg(tmp_path: pathlib.Path) -> None:
    make_case(tmp_path, "BraTS20_Validation_010", seg=False)
    assert find_cases(tmp_path)[0].seg is None
    with pytest.raises(DataError, match="BraTS20_Validation_010: missing segmentation"):
        find_cases(tmp_path, require_seg=True)


def test_empty_and_missing_root(tmp_path: pathlib.Path) -> None:
    (tmp_path / "phantom.json").write_text("{}")
    (tmp_path / ".DS_Store").write_bytes(b"")
    with pytest.raises(DataError, match="no BraTS cases found in") as err:
        find_cases(tmp_path)
    assert str(tmp_path) in str(err.value)
    missing = tmp_path / "does_not_exist"
    with pytest.raises(DataError, match="does_not_exist"):
        find_cases(missing)


# ----------------------------------------------------------------------------- loading


def test_load_case_contents(tmp_path: pathlib.Path) -> None:
    folder = make_case(tmp_path, "BraTS2021_00005")
    vol = load_case(find_cases(tmp_path)[0])
    assert vol.images.shape == (*SHAPE, 4) and vol.images.dtype == np.float32
    assert vol.available == (True,) * 4
    assert vol.seg is not None and vol.seg.dtype == np.uint8 and vol.seg.shape == SHAPE
    assert set(np.unique(vol.seg)) == {0, 1, 2, 4}
    np.testing.assert_allclose(vol.affine, AFFINE)
    assert vol.spacing == (1.0, 1.0, 1.5)
    assert vol.convention == "brats2021"
    assert isinstance(vol.header, nib.Nifti1Header)
    t2 = np.asanyarray(nib.load(file_of(folder, "t2")).dataobj)
    np.testing.assert_array_equal(vol.images[..., MODALITIES.index("t2")], t2)


def test_trailing_singleton_dim_accepted(tmp_path: pathlib.Path) -> None:
    folder = make_case(tmp_path, "BraTS2021_00006")
    write(file_of(folder, "flair"), np.ones((*SHAPE, 1), np.int16))
    vol = load_case(find_cases(tmp_path)[0])
    assert vol.images.shape == (*SHAPE, 4) and (vol.images[..., 3] == 1).all()


def corrupt_garbage(folder: pathlib.Path) -> tuple[str, str]:
    file_of(folder, "t2").write_bytes(b"this is not a nifti file at all" * 10)
    return file_of(folder, "t2").name, "cannot read"


def corrupt_truncated(folder: pathlib.Path) -> tuple[str, str]:
    path = write(file_of(folder, "t1"), np.random.default_rng(0).normal(size=SHAPE))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # header intact, voxel data cut short
    return path.name, "cannot read"


def corrupt_gzip_nonsense(folder: pathlib.Path) -> tuple[str, str]:
    file_of(folder, "t1").write_bytes(gzip.compress(b"\0" * 64))
    return file_of(folder, "t1").name, "cannot read"


def corrupt_shape(folder: pathlib.Path) -> tuple[str, str]:
    write(file_of(folder, "flair"), np.zeros((8, 8, 5), np.int16))
    return file_of(folder, "flair").name, "shape"


def corrupt_4d(folder: pathlib.Path) -> tuple[str, str]:
    write(file_of(folder, "t2"), np.zeros((*SHAPE, 3), np.int16))
    return file_of(folder, "t2").name, "3D"


def corrupt_affine(folder: pathlib.Path) -> tuple[str, str]:
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    write(file_of(folder, "t1ce"), np.zeros(SHAPE, np.int16), shifted)
    return file_of(folder, "t1ce").name, "affine"


def corrupt_nan(folder: pathlib.Path) -> tuple[str, str]:
    data = np.ones(SHAPE, np.float32)
    data[0, 0, :3] = np.nan
    data[1, 1, 1] = np.inf
    write(file_of(folder, "t2"), data)
    return file_of(folder, "t2").name, "4 NaN/Inf"


def corrupt_seg_label(folder: pathlib.Path) -> tuple[str, str]:
    seg = np.zeros(SHAPE, np.uint8)
    seg[1, 1, 1] = 3
    seg[2, 2, 2] = 4
    write(file_of(folder, "seg"), seg)
    return file_of(folder, "seg").name, "labels {3} not in BraTS 2021 convention {0,1,2,4}"


def corrupt_seg_float(folder: pathlib.Path) -> tuple[str, str]:
    seg = np.zeros(SHAPE, np.float32)
    seg[1, 1, 1] = 1.5
    write(file_of(folder, "seg"), seg)
    return file_of(folder, "seg").name, "non-integer"


def corrupt_seg_shape(folder: pathlib.Path) -> tuple[str, str]:
    write(file_of(folder, "seg"), np.zeros((8, 7, 6), np.uint8))
    return file_of(folder, "seg").name, "shape"


@pytest.mark.parametrize(
    "corrupt",
    [
        corrupt_garbage,
        corrupt_truncated,
        corrupt_gzip_nonsense,
        corrupt_shape,
        corrupt_4d,
        corrupt_affine,
        corrupt_nan,
        corrupt_seg_label,
        corrupt_seg_float,
        corrupt_seg_shape,
    ],
)
def test_bad_inputs_name_the_file(tmp_path: pathlib.Path, corrupt) -> None:
    folder = make_case(tmp_path, "BraTS2021_00007")
    name, problem = corrupt(folder)
    (case,) = find_cases(tmp_path)
    with pytest.raises(DataError) as err:
        load_case(case)
    message = str(err.value)
    assert name in message and problem in message
    assert "\n" not in message


def test_2023_label_three_is_valid_but_four_is_not(tmp_path: pathlib.Path) -> None:
    folder = make_case(tmp_path, "BraTS-GLI-00003-000")
    vol = load_case(find_cases(tmp_path)[0])
    assert vol.convention == "brats2023" and set(np.unique(vol.seg)) == {0, 1, 2, 3}
    seg = np.zeros(SHAPE, np.uint8)
    seg[0, 0, 0] = 4
    write(file_of(folder, "seg"), seg)
    with pytest.raises(DataError, match=r"labels \{4\} not in BraTS 2023 convention \{0,1,2,3\}"):
        load_case(find_cases(tmp_path)[0])


# ----------------------------------------------------------------------------- labels <-> regions


# Label values per convention (BraTS 2020 cases use the 2021 convention): background, necrotic core,
# oedema, enhancing tumour.
KNOWN_CONVENTIONS = {"brats2021": (0, 1, 2, 4), "brats2023": (0, 1, 2, 3)}
# Regions (WT, TC, ET) of each label, in label order: 0 -> none, NCR -> WT+TC, ED -> WT, ET -> all three.
REGIONS_OF_LABEL = np.array([[0, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]], bool)


def test_label_conventions_are_the_known_ones() -> None:
    assert {c: tuple(LABEL_VALUES[c]) for c in KNOWN_CONVENTIONS} == KNOWN_CONVENTIONS


@pytest.mark.parametrize("convention", sorted(KNOWN_CONVENTIONS))
def test_regions_to_labels_encodes_each_region_combination(convention: str) -> None:
    labels = regions_to_labels(REGIONS_OF_LABEL, convention)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, KNOWN_CONVENTIONS[convention])
    np.testing.assert_array_equal(labels_to_regions(labels, convention), REGIONS_OF_LABEL)


@pytest.mark.parametrize("convention", sorted(KNOWN_CONVENTIONS))
def test_regions_round_trip(convention: str) -> None:
    values = np.array(LABEL_VALUES[convention], np.uint8)
    seg = np.random.default_rng(1).choice(values, size=(5, 6, 7)).astype(np.uint8)
    seg[0, 0, :4] = values  # every label value occurs
    assert set(np.unique(seg)) == set(values.tolist())
    regions = labels_to_regions(seg, convention)
    assert regions.shape == (5, 6, 7, 3) and regions.dtype == bool
    wt, tc, et = regions[..., 0], regions[..., 1], regions[..., 2]
    assert not (et & ~tc).any() and not (tc & ~wt).any()
    np.testing.assert_array_equal(wt, seg > 0)
    np.testing.assert_array_equal(et, seg == values[3])
    np.testing.assert_array_equal(tc, (seg == 1) | (seg == values[3]))
    back = regions_to_labels(regions, convention)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, seg)
    np.testing.assert_array_equal(labels_to_regions(back, convention), regions)


@pytest.mark.parametrize("convention", sorted(KNOWN_CONVENTIONS))
def test_regions_to_labels_background_is_zero_and_a_region_is_not(convention: str) -> None:
    empty = np.zeros((4, 5, 6, 3), bool)
    labels = regions_to_labels(empty, convention)
    assert labels.shape == (4, 5, 6) and labels.dtype == np.uint8 and not labels.any()
    et = KNOWN_CONVENTIONS[convention][3]
    for voxel_regions, expected in (((1, 0, 0), 2), ((1, 1, 0), 1), ((1, 1, 1), et)):
        one = empty.copy()
        one[1, 2, 3] = voxel_regions  # one tumour voxel in an otherwise empty volume
        labels = regions_to_labels(one, convention)
        assert labels[1, 2, 3] == expected and np.count_nonzero(labels) == 1, voxel_regions


def test_regions_to_labels_is_hierarchical() -> None:
    # ET without TC/WT, TC without WT: inconsistent regions must not produce tumour labels.
    regions = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1]], bool)
    np.testing.assert_array_equal(regions_to_labels(regions, "brats2021"), [0, 0, 2, 1, 4])
    np.testing.assert_array_equal(regions_to_labels(regions, "brats2023"), [0, 0, 2, 1, 3])
    with pytest.raises(DataError):
        regions_to_labels(regions, "brats2019")


# ----------------------------------------------------------------------------- writing


def test_save_nifti_keeps_geometry(tmp_path: pathlib.Path) -> None:
    make_case(tmp_path / "data", "BraTS2021_00008")
    vol = load_case(find_cases(tmp_path / "data")[0])
    assert vol.seg is not None
    out = save_nifti(vol.seg, vol, tmp_path / "preds" / "deep" / "BraTS2021_00008.nii.gz")
    assert out.exists() and sorted(p.name for p in out.parent.iterdir()) == [out.name]
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, vol.affine)
    assert img.get_data_dtype() == np.uint8
    assert img.header.get_zooms()[:3] == vol.spacing
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), vol.seg)
    # bool / int64 arrays are stored in a NIfTI-friendly type; explicit dtype wins
    labels = save_nifti(vol.seg.astype(np.int64), vol, tmp_path / "l.nii")
    np.testing.assert_array_equal(np.asanyarray(nib.load(labels).dataobj), vol.seg)
    probs = save_nifti(vol.images[..., 0], vol, tmp_path / "p.nii.gz", dtype=np.float32)
    assert nib.load(probs).get_data_dtype() == np.float32
    with pytest.raises(DataError, match="does not match"):
        save_nifti(np.zeros((3, 3, 3)), vol, tmp_path / "bad.nii.gz")


# ----------------------------------------------------------------------------- the real case


@pytest.fixture(scope="module")
def real_volume():
    require_real_data(REAL_CASE)  # without the real case: skipped, and the run fails
    cases = find_cases(REAL_CASE)  # the case folder itself as root
    return cases, load_case(cases[0])


def test_real_case(real_volume, tmp_path: pathlib.Path) -> None:
    cases, vol = real_volume
    assert [c.case_id for c in cases] == ["BraTS-GLI-00001-000"]
    case = cases[0]
    assert case.scheme == "brats2023" and case.convention == "brats2023"
    assert case.patient_id == "BraTS-GLI-00001" and case.seg is None
    assert set(case.images) == set(MODALITIES)
    assert vol.images.shape == (240, 240, 155, 4) and vol.images.dtype == np.float32
    assert vol.seg is None and vol.available == (True,) * 4
    assert np.isfinite(vol.images).all()
    assert all(vol.images[..., c].max() > 0 for c in range(4))
    assert vol.spacing == (1.0, 1.0, 1.0)
    mask = (vol.images[..., 0] > 0).astype(np.uint8)
    out = save_nifti(mask, vol, tmp_path / "pred.nii.gz")
    np.testing.assert_allclose(nib.load(out).affine, vol.affine)
