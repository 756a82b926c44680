"""How the patch-diffusion detectors' scores depend on the test step and the patch size (no retraining).

    python bench/anomaly_sweep.py --runs=runs/anomaly_table --out=runs/anomaly_sweep \\
        --config.data.phantom_version=2
    python bench/anomaly_sweep.py --runs=/tmp/a --out=/tmp/s --preset=smoke --models=pddpm_t2 \\
        --test-steps=250,499 --patch-sizes=8 --trained-patch=16   # after a smoke run in /tmp/a/pddpm_t2

pDDPM and UMA-DDPM noise a patch to the test step t and reconstruct it from its surroundings. If the lesion
still shows through the noise at t (pDDPM's t = 499 keeps sqrt(alpha_bar) ~ 0.7 of the image under the cosine
schedule), the network reconstructs it with the healthy tissue and the residual misses it; a later t hides it
but blurs the reconstruction, a larger patch leaves less context. Each trained run in <runs>/<run> (trained by
bench/anomaly_table.py) is evaluated through run_eval.py at every test step with the trained patch size, and
at every patch size (patch stride = size) with the trained test step, into <runs>/<run>/eval_sweep/t<t>_p<p>
(reused when it exists). The table goes to <out>/anomaly_sweep.md.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# run name (bench/anomaly_table.py) -> (config argument after the preset, sequence)
RUNS = {
    "pddpm_t2": ("configs/anomaly_pddpm.py", "", "t2"),
    "uma_ddpm_single_t2": ("configs/anomaly_uma_ddpm.py", "single", "t2"),
}
COLUMNS = (("val_dice", "val Dice"), ("dsc", "DSC"), ("auprc", "AUPRC"), ("ssim", "healthy SSIM"))


def evaluate(runs: pathlib.Path, run: str, preset: str, step: int, patch: int, extra: list[str]) -> dict:
    config, variant, sequence = RUNS[run]
    workdir = runs / run
    out_dir = workdir / "eval_sweep" / f"t{step}_p{patch}"
    if not (out_dir / "metrics.json").exists():
        arg = ",".join(p for p in (preset or "default", variant) if p)
        cmd = [
            sys.executable,
            str(ROOT / "run_eval.py"),
            f"--config={config}:{arg}",
            f"--workdir={workdir}",
            f"--config.data.sequences={sequence}",
            f"--config.anomaly.test_step={step}",
            f"--config.anomaly.patch_size={patch}",
            f"--config.anomaly.patch_stride={patch}",
            f"--config.eval.output_dir={out_dir}",
            *extra,
        ]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    stats = json.loads((out_dir / "metrics.json").read_text())["sequences"][sequence]
    return {key: stats[key] if key == "val_dice" else stats[key]["mean"] for key, _ in COLUMNS}


def main(argv: list[str] | None = None) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--runs", default="runs/anomaly_table", help="bench/anomaly_table.py's --out")
    parser.add_argument("--out", default="runs/anomaly_sweep")
    parser.add_argument("--preset", default="")
    parser.add_argument("--models", default=",".join(RUNS), help="comma-separated names of RUNS")
    parser.add_argument("--test-steps", default="100,250,499,750,900")
    parser.add_argument("--patch-sizes", default="16,32,64", help="at the trained test step")
    parser.add_argument("--trained-step", type=int, default=499)
    parser.add_argument("--trained-patch", type=int, default=32)
    args, extra = parser.parse_known_args(argv)
    if any(not o.startswith("--config.") for o in extra):
        parser.error(f"unknown arguments {extra}; only --config.* overrides are passed through")
    runs, out = pathlib.Path(args.runs).resolve(), pathlib.Path(args.out).resolve()
    settings = [(int(t), args.trained_patch) for t in args.test_steps.split(",")]
    settings += [(args.trained_step, int(p)) for p in args.patch_sizes.split(",")]
    settings = sorted(set(settings))
    header = ["run", "test step", "patch"] + [label for _, label in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in args.models.split(","):
        for step, patch in settings:
            values = evaluate(runs, run, args.preset, step, patch, extra)
            cells = [run, str(step), str(patch)] + [f"{100 * values[key]:.2f}" for key, _ in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "anomaly_sweep.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
