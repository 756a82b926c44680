"""Prints a Markdown table of evaluated runs: python bench/results_table.py runs/btsegdiff runs/unet_baseline.

Reads each <workdir>/eval/metrics.json (written by run_eval.py); a number is never typed in by hand.
"""

from __future__ import annotations

import json
import pathlib
import sys

REGIONS = ("wt", "tc", "et")


def row(workdir: pathlib.Path) -> str:
    summary = json.loads((workdir / "eval" / "metrics.json").read_text())
    cells = [summary["method"], str(summary["num_cases"]), str(summary["checkpoint_step"])]
    for region in REGIONS:
        stats = summary["regions"].get(region)
        if stats is None:
            cells += ["–", "–"]
            continue
        cells.append(f"{stats['dice']['mean']:.3f} ± {stats['dice']['std']:.3f}")
        cells.append(f"{stats['hd95']['mean']:.1f}")
    cells.append(f"{summary['seconds_per_case']:.1f}")
    return "| " + " | ".join(cells) + " |"


def main(workdirs: list[str]) -> None:
    header = ["method", "cases", "step"]
    for region in REGIONS:
        header += [f"{region.upper()} Dice", f"{region.upper()} HD95 (mm)"]
    header.append("s / case")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for workdir in workdirs:
        print(row(pathlib.Path(workdir)))


if __name__ == "__main__":
    main(sys.argv[1:])
