"""Train/validation/test splits by patient, and cross-validation folds, of found cases.

By patient: the time points of one BraTS 2023 patient stay in one split, so none leaks into evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_pipelines.brats import SPLITS, CaseFiles, DataError


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder counts, then at least one per non-empty split when there are enough."""
    raw = [n * f for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: counts[j])
                counts[donor] -= 1
                counts[i] += 1
    return counts


def split_cases(
    cases: Sequence[CaseFiles],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, list[CaseFiles]]:
    """Split into train/val/test by patient, so no patient's timepoints leak into evaluation.

    Deterministic for a given seed and set of cases (independent of input order); each split is
    sorted by case id.
    """
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or any(f < 0 or not np.isfinite(f) for f in fr) or sum(fr) <= 0:
        raise DataError(f"fractions={tuple(fractions)}: expected three non-negative numbers")
    fr = [f / sum(fr) for f in fr]
    by_patient: dict[str, list[CaseFiles]] = {}
    for case in cases:
        by_patient.setdefault(case.patient_id, []).append(case)
    patients = sorted(by_patient)
    order = np.random.default_rng(seed).permutation(len(patients))
    counts = split_counts(len(patients), fr)
    out: dict[str, list[CaseFiles]] = {}
    start = 0
    for name, count in zip(SPLITS, counts, strict=True):
        chosen = [c for i in order[start : start + count] for c in by_patient[patients[i]]]
        out[name] = sorted(chosen, key=lambda c: c.case_id)
        start += count
    return out


def fold_splits(
    cases: Sequence[CaseFiles], folds: int, fold: int, seed: int = 0, val_patients: int = 0
) -> dict[str, list[CaseFiles]]:
    """Cross-validation by patient: patients dealt (seeded) into ``folds`` groups; test = group ``fold``,
    val = the next group (``val_patients`` = 0) or that many patients of the other groups, train = the
    rest — over the folds every case is tested exactly once. With few cases, a small validation set leaves
    most of them to train on (12 cases, 3 folds: 7 train / 1 val / 4 test instead of 4 / 4 / 4)."""
    if folds < 3 or not 0 <= fold < folds:
        raise DataError(f"data.folds={folds}, data.fold={fold}: need folds >= 3 and 0 <= fold < folds")
    by_patient: dict[str, list[CaseFiles]] = {}
    for case in cases:
        by_patient.setdefault(case.patient_id, []).append(case)
    patients = sorted(by_patient)
    if len(patients) < folds:
        raise DataError(f"data.folds={folds}: only {len(patients)} patient(s) to deal into folds")
    order = np.random.default_rng(seed).permutation(len(patients))
    group = {patients[i]: rank % folds for rank, i in enumerate(order)}
    if val_patients:
        rest = [patients[i] for i in order if group[patients[i]] != fold]
        if not 0 < val_patients < len(rest):
            raise DataError(
                f"data.fold_val_cases={val_patients}: need 0 < it < {len(rest)}, "
                "the patients outside the test fold"
            )
        role = {p: "test" for p in patients if group[p] == fold} | {p: "val" for p in rest[:val_patients]}
    else:
        role = {p: {fold: "test", (fold + 1) % folds: "val"}.get(group[p], "train") for p in patients}
    out: dict[str, list[CaseFiles]] = {name: [] for name in SPLITS}
    for patient, members in by_patient.items():
        out[role.get(patient, "train")].extend(members)
    return {name: sorted(members, key=lambda c: c.case_id) for name, members in out.items()}
