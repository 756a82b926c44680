"""Real BraTS, four sequences: every segmenter at its `real` preset, cross-validated by case.

    python bench/real_brats.py                                      # 5 segmenters x 3 folds (hours)
    python bench/real_brats.py --methods=unet_baseline,btsegdiff    # a part; rerun later for the rest
    python bench/real_brats.py --out=/tmp/rb --preset=smoke --methods=unet_baseline --steps=4   # a try

The labelled cases (default: the twelve BraTS 2018 cases) are dealt into `--folds` folds by case; fold k
tests its cases once, one case of the other folds validates, the rest train (`data.fold_val_cases`). Every
run goes through run_train.py and run_eval.py into <out>/<method>/fold<k>; finished runs and evaluations
are reused, so the table can be built over several sittings. Written to <out>/real_brats.md and
<out>/results.json: WT/TC/ET Dice and HD95 (mean ± sd over the cases, and per case), seconds per training
step and per case, and, case by case, each method minus the first with a 95% bootstrap interval.
`--external`: each method's model of the fold that tested Brats18_2013_20_1 (the same patient as one external
case, so it never trained on it) also segments the four BraTS 2013 cases with T1 and T2 absent.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np
from finished import trained  # bench/ is the script's folder, on sys.path
from real_data import REGIONS, read_cases
from strategy_ablation import paired_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real" / "brats2018-twelve"
EXTERNAL = ROOT.parent / "shared" / "real" / "brats2013-two-sequences"
EXTERNAL_LAYOUT = ROOT / "configs" / "layouts" / "brats2013_two_sequences.json"
SAME_PATIENT = "Brats18_2013_20_1"  # = brats_2013_pat0006_1 of the external set
METHODS = ("unet_baseline", "btsegdiff", "medsegdiff_v1", "medsegdiff_v2", "shaspec")


def _run(script: str, method: str, preset: str, args: list[str]) -> float:
    """Runs one command line; returns its wall-clock seconds."""
    cmd = [sys.executable, str(ROOT / script), f"--config=configs/{method}.py:{preset}", *args]
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - start


def fold_run(out: pathlib.Path, method: str, fold: int, args: argparse.Namespace) -> pathlib.Path:
    """Trains (unless finished) and evaluates one method on one fold; returns the evaluation folder."""
    workdir = out / method / f"fold{fold}"
    data = [
        f"--config.data.root={args.root}",
        f"--config.data.folds={args.folds}",
        f"--config.data.fold={fold}",
        *args.train_args.split(),
    ]
    timing = workdir / "bench_timing.json"
    if not trained(workdir):
        steps = [f"--config.train.steps={args.steps}"] if args.steps else []
        seconds = _run("run_train.py", method, args.preset, [f"--workdir={workdir}", *data, *steps])
        timing.write_text(json.dumps({"train_seconds": seconds}))
    eval_dir = workdir / "eval"
    if not (eval_dir / "per_case.csv").exists():
        evaluation = [f"--config.eval.output_dir={eval_dir}", *args.eval_args.split()]
        _run("run_eval.py", method, args.preset, [f"--workdir={workdir}", *data, *evaluation])
    return eval_dir


def external_run(
    out: pathlib.Path, method: str, folds: list[int], args: argparse.Namespace
) -> pathlib.Path | None:
    """The BraTS 2013 cases (T1c + FLAIR) segmented by the fold model that never trained on their patient
    (None while that fold is not finished)."""
    fold = next(
        (
            k
            for k in folds
            if SAME_PATIENT in (out / method / f"fold{k}" / "eval" / "per_case.csv").read_text()
        ),
        None,
    )
    if fold is None:
        return None
    workdir = out / method / f"fold{fold}"
    eval_dir = workdir / "eval_brats2013"
    if not (eval_dir / "per_case.csv").exists():
        evaluation = [
            f"--config.data.root={args.root}",
            f"--config.data.folds={args.folds}",
            f"--config.data.fold={fold}",
            f"--config.eval.data_root={EXTERNAL}",
            f"--config.eval.layout={EXTERNAL_LAYOUT}",
            "--config.data.available=t1ce,flair",
            f"--config.eval.output_dir={eval_dir}",
            *args.train_args.split(),
            *args.eval_args.split(),
        ]
        _run("run_eval.py", method, args.preset, [f"--workdir={workdir}", *evaluation])
    return eval_dir


def seconds_per_step(workdir: pathlib.Path) -> float:
    """The training run's median seconds per step (compilation excluded), from its summary."""
    return float(json.loads((workdir / "train_summary.json").read_text())["median_step_seconds"])


def method_result(out: pathlib.Path, method: str, folds: list[int]) -> dict:
    rows = read_cases([out / method / f"fold{k}" / "eval" for k in folds])
    values = {
        f"{r}_{m}": np.array([float(x[f"{r}_{m}"]) for x in rows]) for r in REGIONS for m in ("dice", "hd95")
    }
    timing = [json.loads((out / method / f"fold{k}" / "bench_timing.json").read_text()) for k in folds]
    return {
        "cases": [x["case_id"] for x in rows],
        "values": {k: v.tolist() for k, v in values.items()},
        "seconds_per_case": float(np.median([float(x["seconds"]) for x in rows])),
        "seconds_per_step": float(np.median([seconds_per_step(out / method / f"fold{k}") for k in folds])),
        "train_minutes": [round(t["train_seconds"] / 60, 1) for t in timing],
    }


def markdown(results: dict[str, dict]) -> str:
    header = (
        ["method", "cases"]
        + [f"{r.upper()} Dice" for r in REGIONS]
        + [f"{r.upper()} HD95 mm" for r in REGIONS]
    )
    header += ["s / step", "s / case", "training min (folds)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, res in results.items():
        v = {k: np.array(x) for k, x in res["values"].items()}
        cells = [method, str(len(res["cases"]))]
        cells += [f"{v[f'{r}_dice'].mean():.3f} ± {v[f'{r}_dice'].std():.3f}" for r in REGIONS]
        cells += [f"{v[f'{r}_hd95'].mean():.1f} ± {v[f'{r}_hd95'].std():.1f}" for r in REGIONS]
        cells += [f"{res['seconds_per_step']:.2f}", f"{res['seconds_per_case']:.1f}"]
        cells += [", ".join(str(m) for m in res["train_minutes"])]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    methods = list(results)
    cases = results[methods[0]]["cases"]
    text += (
        "\nPer case, WT / TC / ET Dice:\n\n| case | "
        + " | ".join(methods)
        + " |\n|"
        + "---|" * (len(methods) + 1)
    )
    for case in cases:
        cells = []
        for m in methods:
            idx = results[m]["cases"].index(case)
            cells.append(" / ".join(f"{results[m]['values'][f'{r}_dice'][idx]:.3f}" for r in REGIONS))
        text += f"\n| {case} | " + " | ".join(cells) + " |"
    if len(methods) > 1:
        dice = {
            m: {
                r: np.array([results[m]["values"][f"{r}_dice"][results[m]["cases"].index(c)] for c in cases])
                for r in REGIONS
            }
            for m in methods
        }
        text += "\n\n" + paired_table(methods, dice, "per case")
    return text + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/real_brats")
    parser.add_argument("--root", default=str(REAL), help="the labelled cases, in any BraTS release's naming")
    parser.add_argument("--methods", default=",".join(METHODS), help="the first is the paired reference")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--preset", default="real")
    parser.add_argument("--steps", type=int, default=0, help="training steps; 0 = the preset's")
    parser.add_argument("--train-args", default="", help="extra run_train (and run_eval) flags")
    parser.add_argument("--eval-args", default="", help="extra run_eval flags")
    parser.add_argument("--external", action="store_true", help="also the BraTS 2013 cases, T1 and T2 absent")
    parser.add_argument("--table-only", action="store_true", help="tabulate the folds finished so far")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out).resolve()
    methods = args.methods.split(",")
    folds = list(range(args.folds))
    if args.table_only:  # the folds every method has finished, nothing trained
        done = lambda k: all((out / m / f"fold{k}" / "eval" / "per_case.csv").exists() for m in methods)  # noqa: E731
        folds = [k for k in folds if done(k)]
        print(f"finished folds: {folds} of {args.folds}")
    else:
        for fold in folds:  # fold by fold, so that a partial table pairs the methods on whole folds
            for method in methods:
                fold_run(out, method, fold, args)
    results = {method: method_result(out, method, folds) for method in methods}
    table = markdown(results)
    if args.external:
        lines = ["| method | external cases | WT Dice | TC Dice | ET Dice |", "|---|---|---|---|---|"]
        for method in methods:
            eval_dir = external_run(out, method, folds, args)
            if eval_dir is None:
                continue
            rows = read_cases([eval_dir])
            dice = {r: np.array([float(x[f"{r}_dice"]) for x in rows]) for r in REGIONS}
            results[method]["external"] = {r: v.tolist() for r, v in dice.items()}
            cells = [f"{dice[r].mean():.3f} ± {dice[r].std():.3f}" for r in REGIONS]
            lines.append(f"| {method} | {len(rows)} | " + " | ".join(cells) + " |")
        table += "\nBraTS 2013 cases, T1c + FLAIR only (T1 and T2 absent):\n\n" + "\n".join(lines) + "\n"
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "real_brats.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
