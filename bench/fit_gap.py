"""Dice on the cases a fold model trained on against the cases it never saw: fit or generalisation?

    python bench/fit_gap.py --runs=runs/real_brats --methods=unet_baseline,btsegdiff,shaspec

For each method's finished fold runs of `bench/real_brats.py`, the fold model segments its own training cases
(the fold's split, recomputed from the same config) with run_eval.py, into <runs>/<method>/fold<k>/eval_train;
the table sets their Dice beside the test cases'. High Dice on the training cases and low on the test cases
means the models fit what they see and the few training cases limit them; low on both, that the training
budget or the network does.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import subprocess
import sys

import numpy as np
from finished import trained  # bench/ is the script's folder, on sys.path
from real_data import REGIONS, read_cases

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_pipelines import sources  # noqa: E402

REAL = ROOT.parent / "shared" / "real" / "brats2018-twelve"


def fold_args(root: str, folds: int, fold: int) -> list[str]:
    return [f"--config.data.root={root}", f"--config.data.folds={folds}", f"--config.data.fold={fold}"]


def training_cases(method: str, preset: str, root: str, folds: int, fold: int) -> list:
    """The fold's training cases, split exactly as run_train.py split them."""
    config = importlib.import_module(f"configs.{method}").get_config(preset)
    config.data.root, config.data.folds, config.data.fold = root, folds, fold
    return sources.load_splits(config, progress=False)["train"]


def evaluate_training_cases(workdir: pathlib.Path, method: str, args: argparse.Namespace, fold: int) -> None:
    eval_dir = workdir / "eval_train"
    if (eval_dir / "per_case.csv").exists():
        return
    if not trained(workdir) or not (workdir / "eval" / "per_case.csv").exists():
        raise SystemExit(f"{workdir}: no finished, evaluated fold run there (run bench/real_brats.py first)")
    linked = workdir / "train_cases"  # the training cases' folders, linked: run_eval reads a folder
    linked.mkdir(exist_ok=True)
    for case in training_cases(method, args.preset, args.root, args.folds, fold):
        link = linked / case.folder.name
        if not link.exists():
            link.symlink_to(case.folder.resolve(), target_is_directory=True)
    cmd = [
        sys.executable,
        str(ROOT / "run_eval.py"),
        f"--config=configs/{method}.py:{args.preset}",
        f"--workdir={workdir}",
        *fold_args(args.root, args.folds, fold),
        f"--config.eval.data_root={linked}",
        f"--config.eval.output_dir={eval_dir}",
    ]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def mean_dice(eval_dirs: list[pathlib.Path]) -> list[float]:
    rows = read_cases(eval_dirs)
    return [float(np.mean([float(r[f"{region}_dice"]) for r in rows])) for region in REGIONS]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", default="runs/real_brats", help="bench/real_brats.py's --out")
    parser.add_argument("--methods", default="unet_baseline,btsegdiff,shaspec")
    parser.add_argument("--root", default=str(REAL))
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--preset", default="real")
    args = parser.parse_args(argv)
    runs = pathlib.Path(args.runs).resolve()
    lines = [
        "| method | training cases: WT / TC / ET Dice | test cases: WT / TC / ET Dice |",
        "|---|---|---|",
    ]
    for method in args.methods.split(","):
        workdirs = [runs / method / f"fold{k}" for k in range(args.folds)]
        for fold, workdir in enumerate(workdirs):
            evaluate_training_cases(workdir, method, args, fold)
        train = mean_dice([w / "eval_train" for w in workdirs])
        test = mean_dice([w / "eval" for w in workdirs])
        lines.append(
            f"| {method} | "
            + " / ".join(f"{v:.3f}" for v in train)
            + " | "
            + " / ".join(f"{v:.3f}" for v in test)
            + " |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
