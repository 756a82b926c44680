"""Trains and evaluates every segmentation method on the same split and budget; writes a Markdown table.

    python bench/compare_segmentation.py --out=runs/compare            # default preset, all methods
    python bench/compare_segmentation.py --out=/tmp/c --preset=smoke   # seconds, to try it
    python bench/compare_segmentation.py --config.train.steps=800      # overrides go to every method

Each method runs through run_train.py and run_eval.py (the same code a user runs) into <out>/<method>;
finished runs are reused, so the script can be rerun after an interruption. The table is printed and
written to <out>/segmentation.md; every number in it is read from the runs' JSON files.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

from finished import trained  # bench/ is the script's folder, on sys.path

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("unet_baseline", "medsegdiff_v1", "medsegdiff_v2", "btsegdiff")
REGIONS = ("wt", "tc", "et")


def run(script: str, method: str, preset: str, workdir: pathlib.Path, overrides: list[str]) -> None:
    config = f"--config=configs/{method}.py" + (f":{preset}" if preset else "")
    cmd = [sys.executable, str(ROOT / script), config, f"--workdir={workdir}", *overrides]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def table(out: pathlib.Path, methods: list[str]) -> str:
    header = ["method", "params"]
    header += [f"{r.upper()} {m}" for r in REGIONS for m in ("Dice", "IoU", "HD95 mm")]
    header += ["train s/step", "infer s/case", "best step"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        metrics = json.loads((out / method / "eval" / "metrics.json").read_text())
        train = json.loads((out / method / "train_summary.json").read_text())
        cells = [method, f"{train['num_params'] / 1e6:.2f} M"]
        for region in REGIONS:
            stats = metrics["regions"][region]
            cells += [
                f"{stats['dice']['mean']:.3f} ± {stats['dice']['std']:.3f}",
                f"{stats['iou']['mean']:.3f}",
                f"{stats['hd95']['mean']:.1f}",
            ]
        cells += [
            f"{train['median_step_seconds']:.3f}",
            f"{metrics['seconds_per_case']:.1f}",
            str(metrics["checkpoint_step"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/compare", help="one workdir per method under this folder")
    parser.add_argument("--preset", default="", help="'' (default), 'smoke' or 'paper'")
    parser.add_argument("--methods", default=",".join(METHODS))
    args, overrides = parser.parse_known_args(argv)  # the rest: --config.* flags for every method
    if any(not o.startswith("--config.") for o in overrides):
        parser.error(f"unknown arguments {overrides}; only --config.* overrides are passed through")
    out = pathlib.Path(args.out).resolve()
    methods = [m for m in args.methods.split(",") if m]
    for method in methods:
        workdir = out / method
        if not trained(workdir):
            run("run_train.py", method, args.preset, workdir, overrides)
        if not (workdir / "eval" / "metrics.json").exists():
            run("run_eval.py", method, args.preset, workdir, overrides)
    text = table(out, methods)
    (out / "segmentation.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
