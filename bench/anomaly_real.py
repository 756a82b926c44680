"""The anomaly table of UMA-DDPM on real scans: five detectors trained on healthy slices of real BraTS cases.

    python bench/anomaly_real.py --root=/path/to/brats2018-twelve --out=runs/anomaly_real
    python bench/anomaly_real.py --root=/path/to/brats2018-twelve --out=runs/anomaly_real --table-only

For each detector, sequence and fold (the segmenters' three folds by case over the twelve cases): run_train.py
with `configs/anomaly_<detector>.py:real` (healthy slices of the 6 training cases, 5 mm from any tumour voxel;
with `--healthy-root`, the IXI subjects there too for the sequences IXI has), then run_eval.py: the
threshold chosen on the 2 validation cases' tumours, the 4 test cases' tumours scored (DSC, AUPRC, TNR,
TPR) and the reconstruction of their healthy slices (SSIM, PSNR). The diffusion detectors are evaluated at
every noise level of `--levels` (AnoDDPM's start step, the patch detectors' test step) and UMA-DDPM with
every test-time input of `--test-inputs` (`--combine-levels`: also all levels' maps averaged;
`--ensembles`: also each level's maps over several noise draws averaged); the
validation Dice picks one per fold, and the test figures are that one's. Finished runs and evaluations are
reused, and each fold's pick is kept as a record (`--records`) that the table is built from, so the table can
grow over several sittings; a record is reused for the same readings on the same data (preset, steps, extra
flags and the case folders' entries) only. The table goes to <out>/anomaly_real.md.
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
REAL = ROOT.parent / "shared" / "real" / "brats2018-twelve"
DETECTORS = ("dae", "anoddpm", "pddpm", "mddpm", "uma_ddpm")
LEVEL_FIELD = {"anoddpm": "anomaly.start_step", "pddpm": "anomaly.test_step", "mddpm": "anomaly.test_step"}
LEVEL_FIELD["uma_ddpm"] = "anomaly.test_step"
IXI_SEQUENCES = ("t1", "t2")
TUMOUR_METRICS = ("dsc", "auprc", "tnr", "tpr")
HEALTHY_METRICS = ("ssim", "psnr")


def _run(script: str, detector: str, preset: str, args: list[str]) -> None:
    cmd = [sys.executable, str(ROOT / script), f"--config=configs/anomaly_{detector}.py:{preset}", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def data_args(args: argparse.Namespace, sequence: str, fold: int) -> list[str]:
    out = [
        f"--config.data.root={args.root}",
        f"--config.data.fold={fold}",
        f"--config.data.sequences={sequence}",
        *args.train_args.split(),
    ]
    if args.healthy_root and sequence in IXI_SEQUENCES:
        out.append(f"--config.data.healthy_root={args.healthy_root}")
    return out


def readings(detector: str, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(name, run_eval flags) of every test-time setting tried on validation."""
    levels = [int(v) for v in args.levels.split(",")] if detector in LEVEL_FIELD else [None]
    inputs = args.test_inputs.split(",") if detector == "uma_ddpm" else [None]
    ensembles = [int(v) for v in args.ensembles.split(",") if int(v) > 1]
    out = []
    for level in levels:
        for reading in inputs:
            name = (
                "_".join(p for p in (f"t{level}" if level is not None else "", reading or "") if p) or "eval"
            )
            flags = [f"--config.{LEVEL_FIELD[detector]}={level}"] if level is not None else []
            flags += [f"--config.anomaly.test_input={reading}"] if reading else []
            one_draw = ["--config.anomaly.ensemble=1"] if level is not None else []  # whatever the preset's
            out.append((name, flags + one_draw))
            for draws in ensembles if level is not None else []:  # maps of several noise draws averaged
                out.append((f"{name}_ens{draws}", [*flags, f"--config.anomaly.ensemble={draws}"]))
    if args.combine_levels and len(levels) > 1:  # every level's map averaged (`anomaly.levels`)
        grid = "levels_" + "-".join(str(v) for v in levels)  # the grid in the name: no stale reuse
        for reading in inputs:
            name = "_".join(p for p in (grid, reading or "") if p)
            flags = [f"--config.anomaly.levels={args.levels}", "--config.anomaly.ensemble=1"]
            out.append((name, flags + ([f"--config.anomaly.test_input={reading}"] if reading else [])))
    return out


def record_path(args: argparse.Namespace, detector: str, sequence: str, fold: int) -> pathlib.Path:
    return (
        pathlib.Path(args.records or pathlib.Path(args.out) / "records")
        / f"{detector}_{sequence}_fold{fold}.json"
    )


def data_key(args: argparse.Namespace, sequence: str) -> dict:
    """What a fold was measured on, by name rather than path (a record stays valid on another machine): the
    preset, steps and extra flags, and the entries of the case folder (and the IXI folder, where used)."""
    key = {
        "preset": args.preset,
        "steps": args.steps,
        "train_args": args.train_args,
        "cases": _entries(args.root),
    }
    if args.healthy_root and sequence in IXI_SEQUENCES:
        key["healthy"] = _entries(args.healthy_root)
    return key


def _entries(folder: str) -> list[str]:
    path = pathlib.Path(folder)
    if not path.is_dir():
        raise SystemExit(f"{path}: no such folder of cases")
    return sorted(p.name for p in path.iterdir())


def kept_record(args: argparse.Namespace, detector: str, sequence: str, fold: int) -> dict | None:
    """The fold's record if it was measured on the data and reading grid asked now (`--table-only`: any)."""
    path = record_path(args, detector, sequence, fold)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(
            f"{path}: not a readable fold record ({err}); delete it to measure the fold again"
        ) from None
    if getattr(args, "table_only", False):
        return record
    same_grid = list(record["tried"]) == [name for name, _ in readings(detector, args)]
    return record if same_grid and record.get("data") == data_key(args, sequence) else None


def fold_run(out: pathlib.Path, detector: str, sequence: str, fold: int, args: argparse.Namespace) -> dict:
    """Trains (unless finished) and evaluates every reading of one fold; records the one validation picks.

    The record (every reading's validation Dice, the pick's per-case rows) is what the table reads, so a fold
    measured once is not trained again while its record is kept, even after its run folder is gone.
    """
    kept = kept_record(args, detector, sequence, fold)
    if kept is not None:
        return kept
    record = record_path(args, detector, sequence, fold)
    workdir = out / f"{detector}_{sequence}" / f"fold{fold}"
    data = data_args(args, sequence, fold)
    if not trained(workdir):
        steps = [f"--config.train.steps={args.steps}"] if args.steps else []
        _run("run_train.py", detector, args.preset, [f"--workdir={workdir}", *data, *steps])
    tried = []
    for name, flags in readings(detector, args):
        eval_dir = workdir / f"eval_{name}" if name != "eval" else workdir / "eval"
        if not (eval_dir / "metrics.json").exists():
            evaluation = [f"--workdir={workdir}", *data, *flags, f"--config.eval.output_dir={eval_dir}"]
            _run("run_eval.py", detector, args.preset, evaluation)
        stats = json.loads((eval_dir / "metrics.json").read_text())["sequences"][sequence]
        tried.append({"reading": name, "val_dice": round(float(stats["val_dice"]), 4), "eval_dir": eval_dir})
    pick = max(tried, key=lambda r: r["val_dice"])
    result = {
        "reading": pick["reading"],
        "val_dice": pick["val_dice"],
        "tried": {r["reading"]: r["val_dice"] for r in tried},
        "rows": case_rows(pick["eval_dir"], sequence),
        "data": data_key(args, sequence),
    }
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(result, indent=1))
    return result


def case_rows(eval_dir: pathlib.Path, sequence: str) -> list[dict]:
    with (eval_dir / "per_case.csv").open() as f:
        return [r for r in csv.DictReader(f) if r["sequence"] == sequence]


def detector_result(out: pathlib.Path, detector: str, sequence: str, folds: list[int], args) -> dict:
    chosen = [fold_run(out, detector, sequence, k, args) for k in folds]
    rows = [r for c in chosen for r in c["rows"]]
    tumour = [r for r in rows if r["kind"] == "tumour"]
    healthy = [r for r in rows if r["kind"] == "healthy"]
    values = {m: [float(r[m]) for r in tumour] for m in TUMOUR_METRICS}
    values |= {m: [float(r[m]) for r in healthy] for m in HEALTHY_METRICS}
    return {
        "cases": [r["case_id"] for r in tumour],
        "values": values,
        "readings": [c["reading"] for c in chosen],
        "val_dice": [c["val_dice"] for c in chosen],
    }


def markdown(results: dict[tuple[str, str], dict], sequences: list[str]) -> str:
    header = ["detector"]
    for s in sequences:
        header += [f"{s.upper()} {m.upper()}" for m in (*TUMOUR_METRICS, *HEALTHY_METRICS)]
        header += [f"{s.upper()} chosen (folds)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for detector in dict.fromkeys(d for d, _ in results):
        cells = [detector]
        for s in sequences:
            res = results.get((detector, s))
            if res is None:
                cells += [""] * (len(TUMOUR_METRICS) + len(HEALTHY_METRICS) + 1)
                continue
            for m in (*TUMOUR_METRICS, *HEALTHY_METRICS):
                v = float(np.nanmean(res["values"][m])) if res["values"][m] else float("nan")
                cells.append(f"{v:.2f}" if m == "psnr" else f"{100 * v:.2f}")
            cells.append(", ".join(res["readings"]))
        lines.append("| " + " | ".join(cells) + " |")
    per_case = ["| detector | sequence | " + " | ".join(results[next(iter(results))]["cases"]) + " |"]
    per_case.append("|" + "---|" * (2 + len(results[next(iter(results))]["cases"])))
    for (detector, s), res in results.items():
        per_case.append(
            f"| {detector} | {s} | " + " | ".join(f"{100 * v:.1f}" for v in res["values"]["dsc"]) + " |"
        )
    return "\n".join(lines) + "\n\nDSC per test case (%):\n\n" + "\n".join(per_case) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/anomaly_real")
    parser.add_argument("--root", default=str(REAL), help="labelled BraTS cases, any release's naming")
    parser.add_argument("--healthy-root", default="", help="IXI subjects added to training (T1 / T2)")
    parser.add_argument("--detectors", default=",".join(DETECTORS))
    parser.add_argument("--sequences", default="t2,flair")
    parser.add_argument("--folds", default="0,1,2")
    parser.add_argument("--levels", default="50,100,250,499,750", help="noise levels tried on validation")
    parser.add_argument(
        "--test-inputs", default="plain,high_frequency,masked", help="UMA-DDPM's, on validation"
    )
    parser.add_argument(
        "--ensembles", default="1", help="noise draws per level tried on validation, e.g. 1,4"
    )
    parser.add_argument(
        "--combine-levels", action="store_true", help="also every level's maps averaged, as one more reading"
    )
    parser.add_argument(
        "--records", default="", help="each fold's pick and per-case rows; default <out>/records"
    )
    parser.add_argument("--preset", default="real")
    parser.add_argument("--steps", type=int, default=0, help="training steps; 0 = the preset's")
    parser.add_argument("--train-args", default="", help="extra run_train and run_eval flags")
    parser.add_argument("--table-only", action="store_true", help="tabulate the finished folds only")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out).resolve()
    folds = [int(k) for k in args.folds.split(",")]
    sequences = args.sequences.split(",")
    results = {}
    for detector in args.detectors.split(","):
        for sequence in sequences:
            done = all(
                kept_record(args, detector, sequence, k) is not None
                or trained(out / f"{detector}_{sequence}" / f"fold{k}")
                for k in folds
            )
            if args.table_only and not done:
                continue
            results[(detector, sequence)] = detector_result(out, detector, sequence, folds, args)
    if not results:
        raise SystemExit("no detector has finished every fold yet")
    text = markdown(results, sequences)
    out.mkdir(parents=True, exist_ok=True)
    (out / "anomaly_real.md").write_text(text)
    (out / "anomaly_real.json").write_text(
        json.dumps({f"{d}_{s}": r for (d, s), r in results.items()}, indent=1, default=str)
    )
    print(text)


if __name__ == "__main__":
    main()
