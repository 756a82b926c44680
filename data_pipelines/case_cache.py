"""Each case's training slices, prepared once into a cache folder of its own, by parallel worker processes.

A case's folder is named by the case and a hash of its files (names, sizes, modification times) and of the
slicing settings: another split, another fold or an added case prepares only the cases not yet prepared with
these settings, and a changed file or setting prepares that case again. A folder is written under a
temporary name and renamed into place, so a killed job never leaves half a case. Reading and resampling the
NIfTI volumes is the slow part (~1.3 s per real BraTS case on one core), so the cases are prepared in worker
processes (`case_workers`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines import brats, case_workers, slices

VERSION = 2  # 2: one folder per case; slices drawn with the case id's seed (not its position in a list)
ARRAYS = ("image", "label", "z")


def case_key(case: brats.CaseFiles, params: Mapping[str, Any]) -> str:
    """Hash of the case's files (names, sizes, mtimes) and the slicing parameters."""
    paths = [case.images[m] for m in sorted(case.images)]
    paths += [p for p in (case.seg, case.brain_mask) if p is not None]
    stats = [(Path(p).name, Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in paths]
    blob = json.dumps(
        {"version": VERSION, "case": case.case_id, "files": stats, "params": dict(params)}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def case_folder(cache_dir: Path, case: brats.CaseFiles, params: Mapping[str, Any]) -> Path:
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", case.case_id)[:80]
    return Path(cache_dir) / f"{readable}-{case_key(case, params)}"


def case_slices(case: brats.CaseFiles, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The case's examples {"image", "label", "z"}; the slices drawn depend on the seed and case id only."""
    slice_range = params["slice_range"]
    return slices.case_examples(
        brats.load_case(case),
        params["image_size"],
        target=params["target"],
        slice_range=None if slice_range is None else tuple(slice_range),
        healthy_fraction=params["healthy_fraction"],
        rng=np.random.default_rng([params["seed"], zlib.crc32(case.case_id.encode())]),
    )


def prepare_case(case: brats.CaseFiles, params: Mapping[str, Any], folder: Path) -> Path:
    """Writes the case's examples to `folder`/{image,label,z}.npy, all at once (a worker's job)."""
    arrays = case_slices(case, params)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        for key in ARRAYS:
            np.save(work / f"{key}.npy", np.ascontiguousarray(arrays[key]))
        try:
            os.replace(work, folder)
        except OSError:  # another process prepared the same case first: theirs holds the same data
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def prepare(
    cases: Sequence[brats.CaseFiles],
    params: Mapping[str, Any],
    cache_dir: Path,
    *,
    workers: int = 0,
    progress: bool = True,
) -> list[Path]:
    """The cache folder of every case, preparing those missing (`workers` processes; 0 = one per core)."""
    folders = [case_folder(cache_dir, case, params) for case in cases]
    missing = [i for i, folder in enumerate(folders) if not folder.is_dir()]
    jobs = [(cases[i], dict(params), folders[i]) for i in missing]
    for _ in case_workers.run(
        prepare_case, jobs, workers=workers, desc="preparing slices", progress=progress
    ):
        pass
    return folders
