"""Markdown tables of the missing-modality results (printed by run_eval, joined by bench/missing_table.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from diffseg_jax.modalities import MODALITIES, all_subsets

REGIONS = ("wt", "tc", "et")


def subset_label(names: str) -> str:
    """'t1,flair' -> 't1 + flair'."""
    return " + ".join(names.split(","))


def subsets_markdown(routes: dict[str, dict[str, Any]]) -> str:
    """Rows: the 15 subsets and their mean; per route (the `subsets.json` of a run) WT/TC/ET Dice in %."""
    header = ["available"] + [f"{name} {r.upper()}" for name in routes for r in REGIONS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cells(values: dict[str, float]) -> list[str]:
        return [f"{100 * values[r]:.1f}" if r in values else "-" for r in REGIONS]

    for subset in all_subsets():
        key = ",".join(subset)
        row = [subset_label(key)] + [c for t in routes.values() for c in cells(t["dice"].get(key, {}))]
        lines.append("| " + " | ".join(row) + " |")
    mean = ["**mean**"] + [c for t in routes.values() for c in cells(t["mean_over_subsets"])]
    lines.append("| " + " | ".join(mean) + " |")
    return "\n".join(lines) + "\n"


def synthesis_markdown(models: dict[str, dict[str, Any]]) -> str:
    """Per synthesised sequence (pooled over every pattern that lacks it): PSNR (dB) / SSIM (%) per model.

    `models`: label -> a synthesis run's metrics.json; the first one's mean-of-available baseline and
    resampling ceiling are added as rows.
    """
    first = next(iter(models.values()))
    rows = {label: m["per_sequence"] for label, m in models.items()}
    rows["mean of the available sequences"] = first["baseline_mean"]["per_sequence"]
    rows["ceiling: the real sequence after slicing"] = first["resampling_ceiling"]
    header = ["method"] + [f"{s} {k}" for s in MODALITIES for k in ("PSNR", "SSIM")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, per_sequence in rows.items():
        cells = []
        for seq in MODALITIES:
            stats = per_sequence[seq]
            cells += [f"{stats['psnr']['mean']:.2f}", f"{100 * stats['ssim']['mean']:.1f}"]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines) + "\n"


def paired_wilcoxon(ours: list[dict[str, str]], other: list[dict[str, str]], metric: str = "psnr") -> str:
    """Per sequence, M2DN's paired test (as the paper reports it): Wilcoxon signed-rank on `metric` over the
    (case, pattern) pairs two synthesis runs' per_case.csv rows share; median difference and p-value.
    """
    from scipy.stats import wilcoxon

    def keyed(rows):
        return {(r["case_id"], r["available"], r["sequence"]): float(r[metric]) for r in rows}

    a, b = keyed(ours), keyed(other)
    lines = []
    for seq in MODALITIES:
        keys = sorted(k for k in a if k in b and k[2] == seq)
        if len(keys) < 2:
            continue
        diff = [a[k] - b[k] for k in keys]
        p = wilcoxon(diff).pvalue if any(diff) else 1.0
        lines.append(
            f"{seq}: median {metric} difference {float(np.median(diff)):+.2f} (p = {p:.2g}, n = {len(keys)})"
        )
    return "; ".join(lines)
