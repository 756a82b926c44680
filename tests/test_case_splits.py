"""Train/validation/test splits and cross-validation folds, by patient, of found cases."""

from __future__ import annotations

import pathlib

import pytest
from test_brats_reader import scheme_of

from data_pipelines.brats import CaseFiles, DataError
from data_pipelines.case_splits import fold_splits, split_cases


def fake_cases(ids: list[str]) -> list[CaseFiles]:
    folder = pathlib.Path("/nonexistent")
    return [CaseFiles(i, folder / i, {}, None, scheme_of(i)) for i in ids]


def test_split_by_patient() -> None:
    ids = [f"BraTS-GLI-{p:05d}-000" for p in range(40)]
    ids += ["BraTS-GLI-00001-001", "BraTS-GLI-00001-002", "BraTS-GLI-00007-001"]
    cases = fake_cases(ids)
    splits = split_cases(cases, seed=3)
    assert list(splits) == ["train", "val", "test"]
    assigned = [c.case_id for part in splits.values() for c in part]
    assert sorted(assigned) == sorted(ids)  # every case exactly once
    patients = [{c.patient_id for c in part} for part in splits.values()]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert [len(p) for p in patients] == [28, 6, 6]  # 40 patients, 0.7/0.15/0.15
    for part in splits.values():
        assert [c.case_id for c in part] == sorted(c.case_id for c in part)
    # deterministic by seed, independent of input order; another seed gives another split
    assert split_cases(cases[::-1], seed=3) == splits
    assert split_cases(cases, seed=4) != splits


def test_split_few_cases_gets_one_each() -> None:
    cases = fake_cases(["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"])
    splits = split_cases(cases)
    assert [len(v) for v in splits.values()] == [1, 1, 1]
    four = split_cases(fake_cases([f"BraTS20_Training_{i:03d}" for i in range(4)]))
    assert [len(v) for v in four.values()] == [2, 1, 1]


def test_folds_test_every_case_once_with_a_small_validation_set() -> None:
    cases = fake_cases([f"Brats18_CBICA_A{i:02d}_1" for i in range(12)])
    tested = []
    for fold in range(3):
        next_fold = fold_splits(cases, 3, fold, seed=1)
        assert [len(next_fold[s]) for s in ("train", "val", "test")] == [4, 4, 4]
        small = fold_splits(cases, 3, fold, seed=1, val_patients=1)
        assert [len(small[s]) for s in ("train", "val", "test")] == [7, 1, 4]
        assert small["test"] == next_fold["test"]  # the validation choice leaves the test fold as it is
        ids = [{c.case_id for c in small[s]} for s in ("train", "val", "test")]
        assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2]) and len(set().union(*ids)) == 12
        tested += sorted(ids[2])
    assert sorted(tested) == sorted(c.case_id for c in cases)  # every case tested exactly once
    with pytest.raises(DataError, match="fold_val_cases=8"):
        fold_splits(cases, 3, 0, val_patients=8)
