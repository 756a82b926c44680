"""Every case of every split is checked before training: each kind of defect stops with one line naming the
file, `data.on_bad_case=skip` leaves bad cases out, and a second run reads nothing again."""

from __future__ import annotations

import logging
import pathlib

import nibabel as nib
import numpy as np
import pytest
from test_brats_reader import AFFINE, SHAPE, make_case, write

from configs import btsegdiff
from data_pipelines import brats, case_check, case_splits, sources
from data_pipelines.brats import DataError

CASES = [f"BraTS2021_{i:05d}" for i in range(8)]


def _defect(folder: pathlib.Path, kind: str) -> str:
    """Damages one case as a broken download would; returns the file name the error must name."""
    name = folder.name
    if kind == "corrupt":
        path = folder / f"{name}_t2.nii.gz"
        path.write_bytes(path.read_bytes()[:60])  # a truncated download
        return path.name
    if kind == "missing sequence":
        (folder / f"{name}_flair.nii.gz").unlink()
        return name  # the folder, with the expected file name in the message
    if kind == "shape mismatch":
        write(folder / f"{name}_t1ce.nii.gz", np.ones((8, 8, 5), np.int16))
        return f"{name}_t1ce.nii.gz"
    if kind == "affine mismatch":
        shifted = AFFINE.copy()
        shifted[0, 3] += 4.0
        write(folder / f"{name}_t1ce.nii.gz", np.ones(SHAPE, np.int16), shifted)
        return f"{name}_t1ce.nii.gz"
    if kind == "NaN voxel":
        data = np.ones(SHAPE, np.float32)
        data[1, 2, 3] = np.nan
        write(folder / f"{name}_t2.nii.gz", data)
        return f"{name}_t2.nii.gz"
    if kind == "unknown label":
        seg = np.asarray(nib.load(folder / f"{name}_seg.nii.gz").dataobj).copy()
        seg[0, 0, 0] = 3  # not a BraTS 2021 label
        write(folder / f"{name}_seg.nii.gz", seg)
        return f"{name}_seg.nii.gz"
    raise AssertionError(kind)


DEFECTS = ("corrupt", "missing sequence", "shape mismatch", "affine mismatch", "NaN voxel", "unknown label")


def _dataset(root: pathlib.Path) -> None:
    for i, case_id in enumerate(CASES):
        make_case(root, case_id, seed=i)


def _config(root: pathlib.Path, cache: pathlib.Path, **data):
    config = btsegdiff.get_config("smoke")
    config.data.root = str(root)
    config.data.cache_dir = str(cache)
    for key, value in data.items():
        config.data[key] = value
    return config


def _case_in(config, split: str) -> str:
    """The id of a case the split holds (the split is computed on the intact dataset)."""
    cases = brats.find_cases(config.data.root, require_seg=True)
    splits = case_splits.split_cases(cases, tuple(config.data.split_fractions), seed=config.data.split_seed)
    return splits[split][0].case_id


@pytest.mark.parametrize("split", ["train", "val", "test"])
@pytest.mark.parametrize("kind", DEFECTS)
def test_a_bad_case_in_any_split_stops_with_its_file(tmp_path, kind, split):
    _dataset(tmp_path / "data")
    config = _config(tmp_path / "data", tmp_path / "cache")
    bad = _defect(tmp_path / "data" / _case_in(config, split), kind)
    with pytest.raises(DataError) as err:
        sources.load_splits(config, progress=False)
    message = str(err.value)
    assert "\n" not in message and bad in message


@pytest.mark.parametrize("workers", [1, 2])  # 2: the values are read in worker processes
def test_skip_leaves_bad_cases_out_with_a_warning_each(tmp_path, caplog, workers):
    _dataset(tmp_path / "data")
    config = _config(tmp_path / "data", tmp_path / "cache", on_bad_case="skip", prepare_workers=workers)
    _defect(tmp_path / "data" / CASES[1], "NaN voxel")
    _defect(tmp_path / "data" / CASES[4], "missing sequence")
    with caplog.at_level(logging.WARNING):
        splits = sources.load_splits(config, progress=False)
    kept = sorted(c.case_id for members in splits.values() for c in members)
    assert kept == [c for i, c in enumerate(CASES) if i not in (1, 4)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("skipped a bad case" in w for w in warnings) == 2
    assert any("skipped 2 bad case(s); 6 remain" in w for w in warnings)


def test_a_second_run_reads_nothing_again_until_a_file_changes(tmp_path, monkeypatch):
    _dataset(tmp_path / "data")
    config = _config(tmp_path / "data", tmp_path / "cache")
    first = sources.load_splits(config, progress=False)
    reads: list[str] = []
    real_load = brats.load_case
    monkeypatch.setattr(brats, "load_case", lambda case: reads.append(case.case_id) or real_load(case))
    monkeypatch.setattr(case_check.brats, "load_case", brats.load_case)
    assert sources.load_splits(config, progress=False) == first
    assert reads == []
    changed = tmp_path / "data" / CASES[2] / f"{CASES[2]}_t1.nii.gz"
    write(changed, np.full(SHAPE, 7, np.int16))  # new size and mtime
    sources.load_splits(config, progress=False)
    assert reads == [CASES[2]]


def test_unknown_on_bad_case_is_one_line(tmp_path):
    _dataset(tmp_path / "data")
    config = _config(tmp_path / "data", tmp_path / "cache", on_bad_case="ignore")
    with pytest.raises(DataError, match=r"data.on_bad_case='ignore': expected one of \('stop', 'skip'\)"):
        sources.load_splits(config, progress=False)
