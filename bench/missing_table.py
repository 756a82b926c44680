"""Segmentation from every subset of the sequences, four routes side by side, and M2DN's synthesis table.

    python bench/missing_table.py --out=runs/missing                      # default preset (CPU demo)
    python bench/missing_table.py --out=/tmp/m --preset=smoke             # seconds, to try it
    python bench/missing_table.py --eval-args="--config.sampling.num_samples=1"   # cheaper sampling
    python bench/missing_table.py --out=runs/real_brats --preset=real --root=/path/to/brats2018-twelve \
        --routes="BTSegDiff + dropout,M2DN → BTSegDiff,ShaSpec"   # real scans, folds by case

Routes, each evaluated on the test cases with every one of the 15 non-empty subsets (`eval.available=each`;
missing sequences are zero channels):
- BTSegDiff trained on all four (the upper bound on all four; given zeros for the missing);
- BTSegDiff trained with sequence dropout (`train.sequence_dropout=0.5`);
- M2DN -> BTSegDiff: M2DN synthesises the missing sequences, the all-four BTSegDiff segments;
- ShaSpec.
Synthesis table: M2DN and the deterministic U-Net regressor (`configs/synthesis_unet.py`), PSNR/SSIM per
synthesised sequence pooled over the patterns that lack it, with the mean-of-available baseline.
Every run goes through run_train.py / run_eval.py into <out>/<run>; finished runs and subsets are reused,
so the script can be rerun after an interruption. `--config.*` overrides go to every run.
With `--root`: cross-validated by case over those labelled cases, every run in <out>/<run>/fold<k>
(bench/real_brats.py's layout, so its trained folds are reused), the subset Dice the mean over every case of
every fold (`--only-folds=0`: of fold 0 only, into missing_real_fold0.md); the synthesis table is left out.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import shlex
import subprocess
import sys

import numpy as np
from finished import trained  # bench/ is the script's folder, on sys.path
from strategy_ablation import paired_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffseg_jax.modalities import all_subsets  # noqa: E402
from diffseg_jax.tasks.tables import (  # noqa: E402
    paired_wilcoxon,
    subsets_markdown,
    synthesis_markdown,
)

# run name -> (config, training overrides)
RUNS = {
    "btsegdiff": ("btsegdiff", ["--config.train.sequence_dropout=0"]),  # all four always, at any preset
    "btsegdiff_dropout": ("btsegdiff", ["--config.train.sequence_dropout=0.5"]),
    "shaspec": ("shaspec", []),
    "m2dn": ("m2dn", []),
    "synthesis_unet": ("synthesis_unet", []),
}
# route label -> (segmenter run, synthesis run that fills in first, or None)
ROUTES = {
    "BTSegDiff (all four)": ("btsegdiff", None),
    "BTSegDiff + dropout": ("btsegdiff_dropout", None),
    "M2DN → BTSegDiff": ("btsegdiff", "m2dn"),
    "ShaSpec": ("shaspec", None),
}
SYNTHESIS = {"M2DN": "m2dn", "U-Net regressor": "synthesis_unet"}


def _run(script: str, args: list[str]) -> None:
    cmd = [sys.executable, str(ROOT / script), *args]
    print("+", shlex.join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def config_arg(run: str, preset: str) -> str:
    return f"--config=configs/{RUNS[run][0]}.py:{preset or 'default'}"


def train(out: pathlib.Path, run: str, preset: str, extra: list[str], fold: str = "") -> pathlib.Path:
    """<out>/<run> (or <out>/<run>/<fold>), trained unless it is already."""
    workdir = out / run / fold
    if not trained(workdir):
        _run("run_train.py", [config_arg(run, preset), f"--workdir={workdir}", *RUNS[run][1], *extra])
    return workdir


def evaluate_synthesis(out: pathlib.Path, run: str, preset: str, extra: list[str]) -> dict:
    workdir = train(out, run, preset, extra)
    if not (workdir / "eval" / "metrics.json").exists():
        _run("run_eval.py", [config_arg(run, preset), f"--workdir={workdir}", *extra])
    return json.loads((workdir / "eval" / "metrics.json").read_text())


def evaluate_route(
    out: pathlib.Path,
    segmenter: str,
    filler: str | None,
    preset: str,
    extra: list[str],
    eval_args: list[str],
    fold: str = "",
) -> dict:
    """Runs `eval.available=each` into <segmenter>/eval_subsets[_<filler>] (it resumes finished subsets)."""
    workdir = train(out, segmenter, preset, extra, fold)
    out_dir = workdir / ("eval_subsets" + (f"_{filler}" if filler else ""))
    args = [config_arg(segmenter, preset), f"--workdir={workdir}", "--config.eval.available=each"]
    args.append(f"--config.eval.output_dir={out_dir}")
    if filler:
        filler_dir = train(out, filler, preset, extra, fold)
        args += [
            f"--config.eval.fill_in_workdir={filler_dir}",
            f"--config.eval.fill_in_config=configs/{RUNS[filler][0]}.py:{preset or 'default'}",
        ]
    if not (out_dir / "subsets.json").exists():
        _run("run_eval.py", [*args, *extra, *eval_args])
    return json.loads((out_dir / "subsets.json").read_text()) | {"folder": str(out_dir)}


def pooled_over_folds(tables: list[dict]) -> dict:
    """One route's `subsets.json` over several folds: each subset's Dice averaged over every case."""
    dice = {}
    for subset in (",".join(s) for s in all_subsets()):
        rows = []
        for table in tables:
            path = pathlib.Path(table["folder"]) / "subsets" / subset.replace(",", "+") / "per_case.csv"
            rows += list(csv.DictReader(path.open()))
        regions = [r for r in ("wt", "tc", "et") if f"{r}_dice" in rows[0]]
        dice[subset] = {r: float(np.mean([float(row[f"{r}_dice"]) for row in rows])) for r in regions}
    regions = list(next(iter(dice.values())))
    mean = {r: float(np.mean([v[r] for v in dice.values()])) for r in regions}
    return {"dice": dice, "mean_over_subsets": mean, "num_cases": sum(t["num_cases"] for t in tables)}


def per_case_over_subsets(tables: list[dict]) -> dict[str, dict[str, float]]:
    """Each case's Dice averaged over the 15 subsets, per region: the unit of a paired comparison."""
    per_case: dict[str, dict[str, list[float]]] = {}
    for subset in (",".join(s) for s in all_subsets()):
        for table in tables:
            path = pathlib.Path(table["folder"]) / "subsets" / subset.replace(",", "+") / "per_case.csv"
            for row in csv.DictReader(path.open()):
                scores = per_case.setdefault(row["case_id"], {})
                for r in ("wt", "tc", "et"):
                    scores.setdefault(r, []).append(float(row[f"{r}_dice"]))
    return {case: {r: float(np.mean(v)) for r, v in scores.items()} for case, scores in per_case.items()}


def paired_routes(per_fold: dict[str, list[dict]]) -> str:
    """Each route minus the first, case by case over the mean of the 15 subsets, with a bootstrap interval."""
    per_route = {label: per_case_over_subsets(tables) for label, tables in per_fold.items()}
    labels = list(per_route)
    cases = sorted(per_route[labels[0]])
    dice = {
        label: {r: np.array([per_route[label][c][r] for c in cases]) for r in ("wt", "tc", "et")}
        for label in labels
    }
    return paired_table(labels, dice, "per case, mean of the 15 subsets")


def flair_alone_line(routes: dict[str, dict]) -> str:
    """The headline figure: best route's WT Dice from flair alone / all-four BTSegDiff's WT on all four."""
    full = routes["BTSegDiff (all four)"]["dice"]["t1,t1ce,t2,flair"]["wt"]
    best_label, best = max(((k, v["dice"]["flair"]["wt"]) for k, v in routes.items()), key=lambda kv: kv[1])
    share = f"{100 * best / full:.1f}%" if full > 0 else "undefined (all-sequences Dice 0)"
    return (
        f"Flair alone: best route {best_label} WT Dice {best:.3f} = {share} of the all-sequences WT Dice "
        f"{full:.3f} (target: at least 80%)\n"
    )


def mean_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The mean-of-available baseline's scores, stored beside the model's in each per_case.csv row."""
    return [{**r, "psnr": r["mean_psnr"]} for r in rows]


def per_case_rows(out: pathlib.Path, run: str) -> list[dict[str, str]]:
    with (out / run / "eval" / "per_case.csv").open() as f:
        return list(csv.DictReader(f))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/missing", help="one workdir per run under this folder")
    parser.add_argument("--preset", default="", help="'' (default), 'smoke' or 'paper'")
    parser.add_argument(
        "--eval-args", default="", help="extra --config.* overrides for the subset evaluations"
    )
    parser.add_argument("--routes", default=",".join(ROUTES), help="comma-separated names of ROUTES")
    parser.add_argument("--root", default="", help="labelled real cases: cross-validate over them by case")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument(
        "--only-folds", default="", help="with --root: run and tabulate these folds only, e.g. '0'"
    )
    args, extra = parser.parse_known_args(argv)
    if any(not o.startswith("--config.") for o in extra):
        parser.error(f"unknown arguments {extra}; only --config.* overrides are passed through")
    out = pathlib.Path(args.out).resolve()
    eval_args = shlex.split(args.eval_args)
    routes = args.routes.split(",")
    if args.root:
        per_fold: dict[str, list[dict]] = {label: [] for label in routes}
        folds = list(range(args.folds))
        if args.only_folds:
            wanted = args.only_folds.split(",")
            if not all(f.isdigit() and int(f) < args.folds for f in wanted):
                parser.error(f"--only-folds={args.only_folds}: expected folds below --folds={args.folds}")
            folds = [int(f) for f in wanted]
        for fold in folds:  # fold by fold: a partial run covers whole folds
            data = [f"--config.data.root={args.root}", f"--config.data.folds={args.folds}"]
            data.append(f"--config.data.fold={fold}")
            for label in routes:
                seg, filler = ROUTES[label]
                per_fold[label].append(
                    evaluate_route(out, seg, filler, args.preset, extra + data, eval_args, f"fold{fold}")
                )
        pooled = {label: pooled_over_folds(tables) for label, tables in per_fold.items()}
        which = f"fold {args.only_folds} of {args.folds}" if args.only_folds else f"{args.folds} folds"
        text = f"Segmentation from each subset (Dice in %, every case of {which})\n\n"
        text += subsets_markdown(pooled)
        if len(routes) > 1:
            text += "\n" + paired_routes(per_fold)
        suffix = "_fold" + args.only_folds.replace(",", "-") if args.only_folds else ""
        (out / f"missing_real{suffix}.md").write_text(text)
        print(text)
        return

    synthesis = {label: evaluate_synthesis(out, run, args.preset, extra) for label, run in SYNTHESIS.items()}
    routes = {label: evaluate_route(out, *ROUTES[label], args.preset, extra, eval_args) for label in routes}
    text = (
        "Segmentation from each subset (Dice in %, test cases)\n\n"
        + subsets_markdown(routes)
        + "\n"
        + (flair_alone_line(routes) if "BTSegDiff (all four)" in routes else "")
        + "\nSynthesis of each missing sequence (PSNR in dB, SSIM in %; pooled over the patterns lacking it)"
        + "\n\n"
        + synthesis_markdown(synthesis)
        + "\nPaired Wilcoxon, M2DN vs U-Net regressor (PSNR dB per case and pattern): "
        + paired_wilcoxon(per_case_rows(out, "m2dn"), per_case_rows(out, "synthesis_unet"))
        + "\nPaired Wilcoxon, M2DN vs mean of the available: "
        + paired_wilcoxon(per_case_rows(out, "m2dn"), mean_rows(per_case_rows(out, "m2dn")))
        + "\n"
    )
    (out / "missing.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
