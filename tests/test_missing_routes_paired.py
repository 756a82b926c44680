"""bench/missing_table.py: routes compared case by case on each case's mean over the 15 subsets."""

from __future__ import annotations

import csv
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import missing_table  # noqa: E402

from diffseg_jax.modalities import all_subsets  # noqa: E402


def write_route(folder: pathlib.Path, dice_of) -> dict:
    """A route's eval folder: per_case.csv for every subset, Dice given by dice_of(case, subset index)."""
    for i, subset in enumerate(",".join(s) for s in all_subsets()):
        path = folder / "subsets" / subset.replace(",", "+") / "per_case.csv"
        path.parent.mkdir(parents=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, ["case_id", "wt_dice", "tc_dice", "et_dice"])
            writer.writeheader()
            for case in ("a", "b"):
                d = dice_of(case, i)
                writer.writerow({"case_id": case, "wt_dice": d, "tc_dice": d / 2, "et_dice": 0.0})
    return {"folder": str(folder), "num_cases": 2}


def test_each_case_averages_its_subsets_and_the_difference_is_paired(tmp_path):
    first = write_route(tmp_path / "one", lambda case, i: 0.5 if case == "a" else i / 14)
    second = write_route(tmp_path / "two", lambda case, i: 0.7 if case == "a" else i / 14 + 0.1)
    means = missing_table.per_case_over_subsets([first])
    assert means["a"]["wt"] == pytest.approx(0.5)
    assert means["b"]["wt"] == pytest.approx(0.5)  # 0..14 over 14, averaged
    assert means["b"]["tc"] == pytest.approx(0.25)
    table = missing_table.paired_routes({"one": [first], "two": [second]})
    row = next(line for line in table.splitlines() if line.startswith("| two"))
    assert "+0.150" in row.split("|")[3]  # WT: +0.2 on a, +0.1 on b
    assert "2 / 0" in row.split("|")[3]
