"""Trains and evaluates every anomaly detector on the same split and budget; writes Tables 1 and 2.

    python bench/anomaly_table.py --out=runs/anomaly                  # default preset (CPU demo)
    python bench/anomaly_table.py --out=/tmp/a --preset=smoke         # seconds, to try it
    python bench/anomaly_table.py --config.train.steps=300            # overrides go to every run

Table 1 (the paper's): rows DAE, AnoDDPM, pDDPM, mDDPM, UMA-DDPM single (one model per sequence) and
UMA-DDPM unified (one model for T1 and T2); per sequence DSC, AUPRC, TNR, TPR (tumour test cases) and SSIM,
PSNR (reconstructions of healthy test subjects). Table 2 (ablation, T2): masking only; + MAM; + dual loss.
Every run goes through run_train.py and run_eval.py into <out>/<run>; finished runs are reused, so the
script can be rerun after an interruption. Numbers are read from the runs' metrics.json files.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

from finished import trained  # bench/ is the script's folder, on sys.path

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEQUENCES = ("t1", "t2")
COLUMNS = (
    ("dsc", "DSC"),
    ("auprc", "AUPRC"),
    ("tnr", "TNR"),
    ("tpr", "TPR"),
    ("ssim", "SSIM"),
    ("psnr", "PSNR"),
)
# row label -> (config file, variant, sequences trained together)
SINGLE = {
    "DAE": ("anomaly_dae", ""),
    "AnoDDPM": ("anomaly_anoddpm", ""),
    "pDDPM": ("anomaly_pddpm", ""),
    "mDDPM": ("anomaly_mddpm", ""),
    "UMA-DDPM (single)": ("anomaly_uma_ddpm", "single"),
}
ABLATION = {
    "masking only": ("anomaly_uma_ddpm", "masking"),
    "+ MAM": ("anomaly_uma_ddpm", "mam"),
    "+ dual-domain loss (UMA-DDPM)": ("anomaly_uma_ddpm", "single"),
}


def run_name(config: str, variant: str, sequences: str) -> str:
    return "_".join(p for p in (config.removeprefix("anomaly_"), variant, sequences.replace(",", "")) if p)


def train_and_eval(
    out: pathlib.Path, config: str, variant: str, sequences: str, preset: str, extra: list[str]
):
    workdir = out / run_name(config, variant, sequences)
    arg = ",".join(p for p in (preset or "default", variant) if p)
    base = [
        f"--config=configs/{config}.py:{arg}",
        f"--workdir={workdir}",
        f"--config.data.sequences={sequences}",
    ]
    for script, done in (
        ("run_train.py", trained),
        ("run_eval.py", lambda w: (w / "eval/metrics.json").exists()),
    ):
        if not done(workdir):
            cmd = [sys.executable, str(ROOT / script), *base, *extra]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True)
    return json.loads((workdir / "eval" / "metrics.json").read_text())


def cells(metrics: dict, sequence: str) -> list[str]:
    stats = metrics["sequences"][sequence]
    out = []
    for key, _ in COLUMNS:
        value = stats[key]["mean"]
        out.append(f"{value:.2f}" if key == "psnr" else f"{100 * value:.2f}")
    return out


def markdown(rows: dict[str, dict[str, list[str]]], sequences: tuple[str, ...]) -> str:
    header = ["method"] + [f"{s.upper()} {label}" for s in sequences for _, label in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, per_sequence in rows.items():
        lines.append("| " + " | ".join([label] + [c for s in sequences for c in per_sequence[s]]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/anomaly", help="one workdir per run under this folder")
    parser.add_argument("--preset", default="", help="'' (default), 'smoke' or 'paper'")
    parser.add_argument(
        "--t1-rows",
        default=",".join(SINGLE),
        help="single-mode rows also trained on T1 (the others show 'not run' in the T1 columns)",
    )
    args, extra = parser.parse_known_args(argv)
    if any(not o.startswith("--config.") for o in extra):
        parser.error(f"unknown arguments {extra}; only --config.* overrides are passed through")
    out = pathlib.Path(args.out).resolve()

    table1: dict[str, dict[str, list[str]]] = {}
    t1_rows = set(args.t1_rows.split(","))
    for label, (config, variant) in SINGLE.items():
        table1[label] = {
            s: cells(train_and_eval(out, config, variant, s, args.preset, extra), s)
            if s != "t1" or label in t1_rows
            else ["not run"] * len(COLUMNS)
            for s in SEQUENCES
        }
    unified = train_and_eval(out, "anomaly_uma_ddpm", "unified", ",".join(SEQUENCES), args.preset, extra)
    table1["UMA-DDPM (unified)"] = {s: cells(unified, s) for s in SEQUENCES}
    table2 = {
        label: {"t2": cells(train_and_eval(out, config, variant, "t2", args.preset, extra), "t2")}
        for label, (config, variant) in ABLATION.items()
    }
    text = (
        "Table 1 (DSC, AUPRC, TNR, TPR, SSIM in %; PSNR in dB)\n\n"
        + markdown(table1, SEQUENCES)
        + "\nTable 2 (ablation, T2)\n\n"
        + markdown(table2, ("t2",))
    )
    (out / "anomaly.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
