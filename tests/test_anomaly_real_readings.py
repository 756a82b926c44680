"""bench/anomaly_real.py: every test-time reading it tries has a folder name of its own, so a finished
evaluation, and a fold's record, is reused only for the very settings and data that made it."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import anomaly_real  # noqa: E402


def _args(levels: str, ensembles: str = "1", **extra) -> argparse.Namespace:
    return argparse.Namespace(
        levels=levels, test_inputs="plain,masked", combine_levels=True, ensembles=ensembles, **extra
    )


def test_each_reading_names_its_level_input_and_grid():
    names = dict(anomaly_real.readings("uma_ddpm", _args("100,250")))
    assert set(names) == {
        "t100_plain", "t100_masked", "t250_plain", "t250_masked",
        "levels_100-250_plain", "levels_100-250_masked",
    }  # fmt: skip
    assert names["levels_100-250_masked"] == [
        "--config.anomaly.levels=100,250",
        "--config.anomaly.ensemble=1",
        "--config.anomaly.test_input=masked",
    ]
    assert dict(anomaly_real.readings("dae", _args("100,250"))) == {"eval": []}


def test_another_level_grid_is_another_combined_reading():
    first = {n for n, _ in anomaly_real.readings("anoddpm", _args("250,499,750"))}
    second = {n for n, _ in anomaly_real.readings("anoddpm", _args("100,250,499,750"))}
    assert "levels_250-499-750" in first and "levels_100-250-499-750" in second
    assert first - second == {"levels_250-499-750"}


def test_ensembles_are_readings_of_their_own_per_level():
    names = dict(anomaly_real.readings("anoddpm", _args("50,100", ensembles="1,4")))
    assert names["t100_ens4"] == ["--config.anomaly.start_step=100", "--config.anomaly.ensemble=4"]
    assert names["t100"] == [
        "--config.anomaly.start_step=100",
        "--config.anomaly.ensemble=1",
    ]  # not the preset's
    assert {"t50", "t100", "t50_ens4", "t100_ens4"} <= set(names)
    assert not any("ens" in n for n in dict(anomaly_real.readings("dae", _args("50", ensembles="1,4"))))


def _data(tmp_path: pathlib.Path, cases: tuple[str, ...]) -> dict:
    root = tmp_path / "cases"
    for case in cases:
        (root / case).mkdir(parents=True, exist_ok=True)
    return dict(root=str(root), healthy_root="", preset="real", steps=0, train_args="")


def test_a_record_is_kept_only_for_the_grid_and_the_data_that_made_it(tmp_path):
    data = _data(tmp_path, ("Brats18_a_1", "Brats18_b_1"))
    args = _args("50,100", ensembles="1,4", records=str(tmp_path), out=str(tmp_path), **data)
    tried = {name: 0.5 for name, _ in anomaly_real.readings("anoddpm", args)}
    path = anomaly_real.record_path(args, "anoddpm", "t2", 1)
    record = {"reading": "t50", "val_dice": 0.5, "tried": tried, "rows": []}
    path.write_text(json.dumps({**record, "data": anomaly_real.data_key(args, "t2")}))
    assert anomaly_real.kept_record(args, "anoddpm", "t2", 1)["reading"] == "t50"
    assert anomaly_real.kept_record(args, "anoddpm", "t2", 2) is None  # another fold
    other_grid = _args("50,250", records=str(tmp_path), **data)
    assert anomaly_real.kept_record(other_grid, "anoddpm", "t2", 1) is None
    longer = _args("50,100", ensembles="1,4", records=str(tmp_path), **{**data, "steps": 3000})
    assert anomaly_real.kept_record(longer, "anoddpm", "t2", 1) is None  # another training
    _data(tmp_path, ("Brats18_c_1",))  # one case more in the folder: other data
    assert anomaly_real.kept_record(args, "anoddpm", "t2", 1) is None
    tabulating = _args("50,250", records=str(tmp_path), table_only=True, **data)
    assert anomaly_real.kept_record(tabulating, "anoddpm", "t2", 1)["reading"] == "t50"  # what was measured


def test_a_damaged_record_names_its_file(tmp_path):
    args = _args("50", records=str(tmp_path), out=str(tmp_path))
    anomaly_real.record_path(args, "anoddpm", "t2", 0).write_text("{half")
    with pytest.raises(SystemExit, match="anoddpm_t2_fold0.json: not a readable fold record"):
        anomaly_real.kept_record(args, "anoddpm", "t2", 0)


def test_a_missing_case_folder_names_it(tmp_path):
    args = _args("50", records=str(tmp_path), out=str(tmp_path), **_data(tmp_path, ()))
    args.root = str(tmp_path / "nowhere")
    with pytest.raises(SystemExit, match="nowhere: no such folder of cases"):
        anomaly_real.data_key(args, "t2")
