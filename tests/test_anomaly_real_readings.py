"""bench/anomaly_real.py: every test-time reading it tries has a folder name of its own, so a finished
evaluation is reused only for the very setting that made it."""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import anomaly_real  # noqa: E402


def _args(levels: str) -> argparse.Namespace:
    return argparse.Namespace(levels=levels, test_inputs="plain,masked", combine_levels=True)


def test_each_reading_names_its_level_input_and_grid():
    names = dict(anomaly_real.readings("uma_ddpm", _args("100,250")))
    assert set(names) == {
        "t100_plain", "t100_masked", "t250_plain", "t250_masked",
        "levels_100-250_plain", "levels_100-250_masked",
    }  # fmt: skip
    assert names["levels_100-250_masked"] == [
        "--config.anomaly.levels=100,250",
        "--config.anomaly.test_input=masked",
    ]
    assert dict(anomaly_real.readings("dae", _args("100,250"))) == {"eval": []}


def test_another_level_grid_is_another_combined_reading():
    first = {n for n, _ in anomaly_real.readings("anoddpm", _args("250,499,750"))}
    second = {n for n, _ in anomaly_real.readings("anoddpm", _args("100,250,499,750"))}
    assert "levels_250-499-750" in first and "levels_100-250-499-750" in second
    assert first - second == {"levels_250-499-750"}
