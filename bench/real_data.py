"""Real-data benchmark: cross-validation by case on labelled real scans, three routes per method.

    python bench/real_data.py --out=runs/real_data                          # the four BraTS 2013 cases
    python bench/real_data.py --methods=btsegdiff,unet_baseline --fold-steps=400
    python bench/real_data.py --out=/tmp/r --preset=smoke --methods=unet_baseline --fold-steps=4

Routes, for every method and fold (test = one case, val = the next, train = the rest; `data.folds`):

* ``scratch``  — trained on the fold's real training cases only (`--fold-steps`);
* ``transfer`` — the phantom-trained model as is (trained once per method on the phantom with the same
  sequences as the real data, `--phantom-steps`);
* ``finetune`` — the phantom-trained model fine-tuned on the fold's training cases
  (`train.init_from`, a fresh optimiser, `--fold-steps`).

Every run goes through run_train.py and run_eval.py into <out>/<method>/<route>_fold<k> (the phantom model:
<out>/<method>/phantom); finished runs are reused, so the script can be rerun after an interruption. Each
case is tested exactly once per route; the table gives the mean ± sd over the cases of WT/TC/ET Dice and
HD95, read back from the runs' per_case.csv files, and is written to <out>/real_data.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
from finished import trained  # bench/ is the script's folder, on sys.path

ROOT = pathlib.Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real" / "brats2013-two-sequences"
LAYOUT = ROOT / "configs" / "layouts" / "brats2013_two_sequences.json"
METHODS = ("btsegdiff", "medsegdiff_v1", "unet_baseline", "shaspec")
ROUTES = ("scratch", "transfer", "finetune")
REGIONS = ("wt", "tc", "et")


def _run(script: str, method: str, args: list[str], preset: str = "") -> None:
    config = f"--config=configs/{method}.py" + (f":{preset}" if preset else "")
    cmd = [sys.executable, str(ROOT / script), config, *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def phantom_model(out: pathlib.Path, method: str, args: argparse.Namespace) -> pathlib.Path:
    workdir = out / method / "phantom"
    if not trained(workdir):
        steps = [f"--config.train.steps={args.phantom_steps}"] if args.phantom_steps else []
        available = f"--config.data.available={args.available}"
        _run("run_train.py", method, [f"--workdir={workdir}", available, *steps], args.preset)
    return workdir


def fold_run(
    out: pathlib.Path, method: str, route: str, fold: int, args: argparse.Namespace, phantom: pathlib.Path
) -> pathlib.Path:
    """Trains (unless transfer) and evaluates one route on one fold; returns the eval output folder."""
    real = [
        f"--config.data.root={args.root}",
        f"--config.data.layout={args.layout}",
        f"--config.data.available={args.available}",
        f"--config.data.folds={args.folds}",
        f"--config.data.fold={fold}",
    ]
    run_dir = out / method / f"{route}_fold{fold}"
    eval_dir = run_dir / "eval"
    if route == "transfer":
        workdir = phantom
    else:
        workdir = run_dir
        if not trained(workdir):
            train = [
                f"--config.train.steps={args.fold_steps}",
                f"--config.train.eval_every={max(args.fold_steps // 4, 1)}",
                f"--config.train.checkpoint_every={max(args.fold_steps // 4, 1)}",
            ]
            if route == "finetune":
                train.append(f"--config.train.init_from={phantom}")
            _run("run_train.py", method, [f"--workdir={workdir}", *real, *train], args.preset)
    if not (eval_dir / "per_case.csv").exists():
        evaluation = [f"--config.eval.output_dir={eval_dir}", *args.eval_args.split()]
        _run("run_eval.py", method, [f"--workdir={workdir}", *real, *evaluation], args.preset)
    return eval_dir


def read_cases(eval_dirs: list[pathlib.Path]) -> list[dict[str, str]]:
    rows = []
    for eval_dir in eval_dirs:
        rows += list(csv.DictReader((eval_dir / "per_case.csv").open()))
    return rows


def summary(rows: list[dict[str, str]]) -> dict[str, dict[str, float]]:
    out = {}
    for region in REGIONS:
        for metric in ("dice", "hd95"):
            values = np.array([float(r[f"{region}_{metric}"]) for r in rows])
            out[f"{region}_{metric}"] = {"mean": float(values.mean()), "sd": float(values.std())}
    return out


def markdown(results: dict[tuple[str, str], dict]) -> str:
    header = ["method", "route", "cases"]
    header += [f"{r.upper()} Dice" for r in REGIONS] + [f"{r.upper()} HD95 mm" for r in REGIONS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (method, route), result in results.items():
        stats = result["summary"]
        cells = [method, route, str(result["cases"])]
        cells += [f"{stats[f'{r}_dice']['mean']:.3f} ± {stats[f'{r}_dice']['sd']:.3f}" for r in REGIONS]
        cells += [f"{stats[f'{r}_hd95']['mean']:.1f}" for r in REGIONS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/real_data")
    parser.add_argument("--root", default=str(REAL), help="the labelled real cases")
    parser.add_argument("--layout", default=str(LAYOUT), help="their layout file")
    parser.add_argument("--available", default="t1ce,flair", help="the sequences the real cases have")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--folds", type=int, default=4, help="cross-validation folds (4 cases: one each)")
    parser.add_argument("--fold-steps", type=int, default=800, help="training steps of a fold")
    parser.add_argument("--phantom-steps", type=int, default=0, help="0 = the preset's budget")
    parser.add_argument("--preset", default="", help="e.g. smoke, to try the script in a minute")
    parser.add_argument("--eval-args", default="", help="extra run_eval flags, e.g. fewer sampling steps")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out).resolve()
    results: dict[tuple[str, str], dict] = {}
    for method in args.methods.split(","):
        routes = args.routes.split(",")
        phantom = phantom_model(out, method, args) if {"transfer", "finetune"} & set(routes) else out
        for route in routes:
            eval_dirs = [fold_run(out, method, route, k, args, phantom) for k in range(args.folds)]
            rows = read_cases(eval_dirs)
            results[method, route] = {"cases": len(rows), "summary": summary(rows), "per_case": rows}
            (out / "results.json").write_text(json.dumps({f"{m}/{r}": v for (m, r), v in results.items()}))
    table = markdown(results)
    (out / "real_data.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
