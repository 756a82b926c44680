"""What each uncertainty map is worth: QU-BraTS score, UEO and ECE per region, on the phantom's test split
or cross-validated by case over real scans.

    python bench/uncertainty_table.py --runs=runs/compare --out=runs/uncertainty
    python bench/uncertainty_table.py --runs=/tmp/u --out=/tmp/u --preset=smoke   # to try it
    python bench/uncertainty_table.py --runs=runs/real_brats --out=runs/real_uncertainty --preset=real \
        --root=/path/to/brats2018-twelve          # the folds of bench/real_brats.py, every case once

Sources: the U-Net's softmax entropy, the U-Net with flip test-time augmentation (entropy of the mean over
four flips), a U-Net trained with dropout 0.1 and evaluated with MC dropout (entropy of the mean of 10
passes; its run is <runs>/unet_baseline_dropout), MedSegDiff-V1's chains fused by their mean (the entropy of
that mean) and BTSegDiff's stepwise uncertainty. Trained runs are read from <runs>/<run> (a missing or
unfinished one is trained there through run_train.py with the `--config.*` overrides given); each source is
evaluated through run_eval.py into <runs>/<run>/eval_uncertainty_<source>, reused when it exists. The table
goes to <out>/uncertainty.md. With `--root`, each run is <runs>/<run>/fold<k> of `--folds` folds by case
(bench/real_brats.py's layout, so its trained folds are reused), and every figure is the mean over the cases
(ECE too, each case's own).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

import numpy as np
from finished import trained  # bench/ is the script's folder, on sys.path
from real_data import read_cases

ROOT = pathlib.Path(__file__).resolve().parents[1]
REGIONS = ("wt", "tc", "et")
# source name -> (method, its run under --runs, run_train overrides, run_eval overrides)
SOURCES = {
    "U-Net softmax entropy": ("unet_baseline", "unet_baseline", [], []),
    "U-Net + flip TTA": ("unet_baseline", "unet_baseline", [], ["--config.eval.tta=flips"]),
    "U-Net + MC dropout (10 passes)": (
        "unet_baseline",
        "unet_baseline_dropout",
        ["--config.model.dropout=0.1", "--config.train.sequence_dropout=0"],  # as the U-Net beside it
        ["--config.model.dropout=0.1", "--config.eval.mc_dropout=10"],
    ),
    "MedSegDiff-V1 entropy of the mean of 5 chains": (
        "medsegdiff_v1",
        "medsegdiff_v1",
        [],
        ["--config.sampling.fusion=mean"],
    ),
    "BTSegDiff stepwise uncertainty": ("btsegdiff", "btsegdiff", [], []),
    "BTSegDiff stepwise uncertainty (S = 10)": (
        "btsegdiff",
        "btsegdiff",
        [],
        ["--config.sampling.num_samples=10"],
    ),
    "BTSegDiff stepwise uncertainty (10 DDIM steps)": (
        "btsegdiff",
        "btsegdiff",
        [],
        ["--config.sampling.num_steps=10"],
    ),
    "BTSegDiff entropy of the mean of its chains": (
        "btsegdiff",
        "btsegdiff",
        [],
        ["--config.sampling.fusion=mean"],
    ),
}

# More chains and more steps: what the stepwise sampler gains from more compute (on request).
MORE_COMPUTE = ("BTSegDiff stepwise uncertainty (S = 10)", "BTSegDiff stepwise uncertainty (10 DDIM steps)")
DEFAULT_SOURCES = tuple(s for s in SOURCES if s not in MORE_COMPUTE)


def slug(source: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in source.lower()).strip("_")


def run(script: str, method: str, preset: str, args: list[str]) -> None:
    config = f"--config=configs/{method}.py" + (f":{preset}" if preset else "")
    cmd = [sys.executable, str(ROOT / script), config, *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def table(results: dict[str, dict]) -> str:
    header = ["uncertainty source"] + [f"{r.upper()} Dice" for r in REGIONS]
    header += [f"{r.upper()} QU-BraTS" for r in REGIONS] + [f"{r.upper()} UEO" for r in REGIONS]
    header += [f"{r.upper()} ECE" for r in REGIONS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for source, summary in results.items():
        regions = summary["regions"]
        cells = [source] + [f"{regions[r]['dice']['mean']:.3f}" for r in REGIONS]
        cells += [f"{regions[r]['qu_score']['mean']:.3f}" for r in REGIONS]
        cells += [f"{regions[r]['ueo']['mean']:.3f}" for r in REGIONS]
        cells += [f"{summary['calibration'][r]['ece']:.4f}" for r in REGIONS]  # pooled over the test cases
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def case_means(eval_dirs: list[pathlib.Path]) -> dict:
    """metrics.json's shape (regions' means, calibration's ECE) from the per-case rows of several folds."""
    rows = read_cases(eval_dirs)
    mean = lambda key: float(np.mean([float(row[key]) for row in rows]))  # noqa: E731
    names = ("dice", "qu_score", "ueo")
    return {
        "regions": {r: {name: {"mean": mean(f"{r}_{name}")} for name in names} for r in REGIONS},
        "calibration": {r: {"ece": mean(f"{r}_ece")} for r in REGIONS},
        "num_cases": len(rows),
    }


def main(argv: list[str] | None = None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--runs", default="runs/compare", help="trained workdirs, one per method")
    parser.add_argument("--out", default="runs/uncertainty")
    parser.add_argument("--preset", default="")
    parser.add_argument(
        "--sources", default=",".join(DEFAULT_SOURCES), help="comma-separated names of SOURCES"
    )
    parser.add_argument("--root", default="", help="labelled real cases: cross-validate over them by case")
    parser.add_argument("--folds", type=int, default=3)
    args, overrides = parser.parse_known_args(argv)  # --config.* flags for every training and evaluation
    if any(not o.startswith("--config.") for o in overrides):
        parser.error(f"unknown arguments {overrides}; only --config.* overrides are passed through")
    runs, out = pathlib.Path(args.runs).resolve(), pathlib.Path(args.out).resolve()
    folds = range(args.folds) if args.root else [None]
    evaluated: dict[str, list[pathlib.Path]] = {}
    for fold in folds:  # fold by fold: a partial table covers whole folds
        data = (
            [] if fold is None else [f"--config.data.root={args.root}", f"--config.data.folds={args.folds}"]
        )
        data += [] if fold is None else [f"--config.data.fold={fold}"]
        for source in args.sources.split(","):
            method, run_name, train_args, eval_args = SOURCES[source]
            workdir = runs / run_name / ("" if fold is None else f"fold{fold}")
            if not trained(workdir):
                flags = [f"--workdir={workdir}", *data, *train_args, *overrides]
                run("run_train.py", method, args.preset, flags)
            out_dir = workdir / f"eval_uncertainty_{slug(source)}"
            if not (out_dir / "metrics.json").exists():
                flags = [f"--workdir={workdir}", f"--config.eval.output_dir={out_dir}", *data, *eval_args]
                run("run_eval.py", method, args.preset, flags + overrides)
            evaluated.setdefault(source, []).append(out_dir)
    if args.root:
        text = table({source: case_means(dirs) for source, dirs in evaluated.items()})
    else:
        text = table(
            {source: json.loads((dirs[0] / "metrics.json").read_text()) for source, dirs in evaluated.items()}
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "uncertainty.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
