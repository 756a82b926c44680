"""Majority vote of the segmenters' written predictions on the real folds: does an ensemble of methods help?

    python bench/vote_real.py --runs=runs/real_brats --methods=unet_baseline,btsegdiff,shaspec

Ensembling several networks is what the BraTS challenge's leading entries do with few training cases. Here
each test case's `predictions/<case>_seg.nii.gz` of every method's fold model (`bench/real_brats.py`'s runs,
on the case's own grid) votes per region: a voxel is whole tumour, tumour core or enhancing tumour when more
than half of the methods say so (nested again when the labels are written). The vote is scored with the
evaluation's metrics against the reference and paired per case with each of its members. No network runs.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import nibabel as nib
import numpy as np
from real_data import REGIONS, read_cases
from strategy_ablation import paired_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_pipelines import brats  # noqa: E402
from diffseg_jax.tasks import segmentation  # noqa: E402

REAL = ROOT.parent / "shared" / "real" / "brats2018-twelve"


def vote(labels: list[np.ndarray], convention: str) -> np.ndarray:
    """Per region, more than half of the label maps; written back in the case's label convention."""
    share = np.mean([brats.labels_to_regions(x, convention) for x in labels], axis=0)
    return segmentation.prediction_to_labels(share, convention, "regions")


def prediction_paths(runs: pathlib.Path, method: str, folds: int) -> dict[str, pathlib.Path]:
    """case id -> the fold model's written segmentation of that test case."""
    paths = {}
    for k in range(folds):
        folder = runs / method / f"fold{k}" / "eval" / "predictions"
        if not folder.is_dir():
            raise SystemExit(f"{folder}: no predictions (run bench/real_brats.py --methods={method} first)")
        paths |= {p.name.removesuffix("_seg.nii.gz"): p for p in folder.glob("*_seg.nii.gz")}
    return paths


def dice_per_case(labels: np.ndarray, volume: brats.CaseVolume) -> dict[str, float]:
    scores = segmentation.case_metrics(labels, volume, "regions")
    return {f"{r}_{m}": scores[r][m] for r in REGIONS for m in ("dice", "hd95")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", default="runs/real_brats", help="bench/real_brats.py's --out")
    parser.add_argument("--methods", default="unet_baseline,btsegdiff,shaspec", help="the voters")
    parser.add_argument("--root", default=str(REAL), help="the labelled cases the folds were drawn from")
    parser.add_argument("--folds", type=int, default=3)
    args = parser.parse_args(argv)
    runs = pathlib.Path(args.runs).resolve()
    methods = args.methods.split(",")
    paths = {m: prediction_paths(runs, m, args.folds) for m in methods}
    cases = {c.case_id: c for c in brats.find_cases(args.root, require_seg=True)}
    missing = sorted(set(cases) - set.intersection(*(set(p) for p in paths.values())))
    if missing:
        raise SystemExit(f"no prediction of {missing[0]} (and {len(missing) - 1} more) by every method")

    scored = {m: {} for m in [*methods, "vote"]}
    for case_id in sorted(cases):
        volume = brats.load_case(cases[case_id])
        labels = {m: np.asarray(nib.load(paths[m][case_id]).dataobj) for m in methods}
        labels["vote"] = vote(list(labels.values()), volume.convention)
        for name, x in labels.items():
            scored[name][case_id] = dice_per_case(x, volume)
        print(case_id, " ".join(f"{n} {scored[n][case_id]['wt_dice']:.3f}" for n in labels), flush=True)

    # each member rescored here must equal its own evaluation: the same files, the same metrics
    for m in methods:
        eval_dirs = [runs / m / f"fold{k}" / "eval" for k in range(args.folds)]
        written = {r["case_id"]: r for r in read_cases(eval_dirs)}
        for case_id, row in scored[m].items():
            assert abs(row["wt_dice"] - float(written[case_id]["wt_dice"])) < 1e-6, (m, case_id)

    ids = sorted(cases)
    dice = {n: {r: np.array([s[c][f"{r}_dice"] for c in ids]) for r in REGIONS} for n, s in scored.items()}
    hd95 = {n: {r: np.array([s[c][f"{r}_hd95"] for c in ids]) for r in REGIONS} for n, s in scored.items()}
    lines = ["| | WT Dice | TC Dice | ET Dice | WT HD95 mm |", "|---|---|---|---|---|"]
    for name in scored:
        cells = [f"{dice[name][r].mean():.3f} ± {dice[name][r].std():.3f}" for r in REGIONS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {hd95[name]['wt'].mean():.1f} |")
    paired = [paired_table([m, "vote"], dice, "per case").splitlines() for m in methods]
    table = ["| the vote minus | cases" + paired[0][0].split("per case", 1)[1], paired[0][1]]
    for m, rows in zip(methods, paired, strict=True):
        table.append(f"| {m} | " + rows[2].split(" | ", 1)[1])
    print("\n".join(lines) + "\n\n" + "\n".join(table))


if __name__ == "__main__":
    main()
