"""The IXI reader (`data_pipelines/ixi.py`) on hand-made folders: the release's file names, masks, and
one-line errors naming the file for bad input."""

import nibabel as nib
import numpy as np
import pytest

from data_pipelines import ixi
from data_pipelines.brats import DataError

AFFINE = np.diag([1.2, 1.0, 1.5, 1.0])


def _save(path, data, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


def _volume(shape=(6, 7, 5), dtype=np.int16):
    data = np.zeros(shape, dtype)
    data[1:-1, 1:-1, 1:-1] = np.arange(1, 1 + (shape[0] - 2) * (shape[1] - 2) * (shape[2] - 2)).reshape(
        shape[0] - 2, shape[1] - 2, shape[2] - 2
    )
    return data


@pytest.fixture
def hand_made(tmp_path):
    root = tmp_path / "IXI"
    for seq in ("T1", "T2", "PD", "mask"):
        data = (_volume() > 0).astype(np.uint8) if seq == "mask" else _volume()
        _save(root / f"IXI002-Guys-0828-{seq}.nii.gz", data)
    for seq in ("T1", "T2", "mask"):
        data = (_volume() > 0).astype(np.uint8) if seq == "mask" else _volume()
        _save(root / "more" / f"IXI012-HH-1211-{seq}.nii", data)  # uncompressed, in a subfolder
    (root / "README.txt").write_text("not an image")
    return root


def _one_line_naming(exc_info, *needles):
    message = str(exc_info.value)
    assert "\n" not in message
    for needle in needles:
        assert str(needle) in message, (needle, message)


def test_find_subjects_real_naming(hand_made):
    found = ixi.find_subjects(hand_made)
    assert [s.subject_id for s in found] == ["IXI002-Guys-0828", "IXI012-HH-1211"]
    assert list(found[0].images) == ["t1", "t2"]
    assert found[0].images["t2"].name == "IXI002-Guys-0828-T2.nii.gz"
    assert found[1].mask.name == "IXI012-HH-1211-mask.nii"
    only_t2 = ixi.find_subjects(hand_made, sequences=("t2",))
    assert [list(s.images) for s in only_t2] == [["t2"], ["t2"]]
    data = ixi.load_subject(found[1])
    assert data["t1"].dtype == np.float32 and data["brain"].dtype == bool
    assert data["brain"].sum() == 4 * 5 * 3
    np.testing.assert_allclose(data["affine"], AFFINE)


def test_find_subjects_without_mask_uses_nonzero_voxels(hand_made):
    for mask in hand_made.rglob("*-mask.nii*"):
        mask.unlink()
    found = ixi.find_subjects(hand_made, mask_suffix="")
    assert all(s.mask is None for s in found)
    data = ixi.load_subject(found[0])
    np.testing.assert_array_equal(data["brain"], _volume() > 0)


def test_find_subjects_bad_roots(tmp_path):
    with pytest.raises(DataError) as exc:
        ixi.find_subjects(tmp_path / "nowhere")
    _one_line_naming(exc, tmp_path / "nowhere")
    file = _save(tmp_path / "IXI002-Guys-0828-T1.nii.gz", _volume())
    with pytest.raises(DataError) as exc:
        ixi.find_subjects(file)
    _one_line_naming(exc, file)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(DataError) as exc:
        ixi.find_subjects(empty)
    _one_line_naming(exc, empty, "IXI")


def test_find_subjects_missing_sequence_and_mask(hand_made):
    (hand_made / "more" / "IXI012-HH-1211-T2.nii").unlink()
    with pytest.raises(DataError) as exc:
        ixi.find_subjects(hand_made)
    _one_line_naming(exc, "IXI012-HH-1211", "IXI012-HH-1211-T2.nii")
    assert len(ixi.find_subjects(hand_made, sequences=("t1",))) == 2
    (hand_made / "IXI002-Guys-0828-mask.nii.gz").unlink()  # no mask file: the brain comes from the data
    without_mask = ixi.find_subjects(hand_made, sequences=("t1",))[0]
    assert without_mask.mask is None
    np.testing.assert_array_equal(ixi.load_subject(without_mask)["brain"], _volume() > 0)


@pytest.mark.parametrize(
    "name, data, affine, problem",
    [
        ("IXI002-Guys-0828-T2.nii.gz", _volume((6, 7, 6)), AFFINE, "shape"),
        ("IXI002-Guys-0828-T2.nii.gz", _volume(), np.diag([1.2, 1.0, 2.5, 1.0]), "affine"),
        (
            "IXI002-Guys-0828-T2.nii.gz",
            np.where(_volume() == 5, np.nan, _volume()).astype(np.float32),
            AFFINE,
            "NaN",
        ),
        ("IXI002-Guys-0828-mask.nii.gz", np.zeros((6, 7, 5), np.uint8), AFFINE, "empty"),
        ("IXI002-Guys-0828-mask.nii.gz", (_volume((5, 7, 5)) > 0).astype(np.uint8), AFFINE, "shape"),
    ],
)
def test_load_subject_bad_files(hand_made, name, data, affine, problem):
    _save(hand_made / name, data, affine)
    files = ixi.find_subjects(hand_made)[0]
    with pytest.raises(DataError) as exc:
        ixi.load_subject(files)
    _one_line_naming(exc, hand_made / name, problem)


def test_load_subject_unreadable(hand_made):
    bad = hand_made / "IXI002-Guys-0828-T1.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    with pytest.raises(DataError) as exc:
        ixi.load_subject(ixi.find_subjects(hand_made)[0])
    _one_line_naming(exc, bad)
