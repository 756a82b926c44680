"""Healthy phantom subjects written in the IXI layout: the training data of the anomaly detectors.

Same generator as the BraTS-layout phantom (`phantom.generate_case(..., healthy=True)`), so healthy and
tumour scans share intensities, bias and noise: a detector then flags lesions, not a domain shift. Indices
start at HEALTHY_INDEX_OFFSET, a random stream disjoint from the tumour cases' (different anatomy draws).
Files, in one flat folder as the IXI tarballs unpack: IXI<nnn>-<site>-<nnnn>-{T1,T2}.nii.gz and a brain
mask IXI<nnn>-<site>-<nnnn>-mask.nii.gz (IXI ships no masks; real users make them, e.g. with HD-BET).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from data_pipelines import phantom

HEALTHY_INDEX_OFFSET = 100_000
SITES = ("Guys", "HH", "IOP")
VERSION = 1
_FILES = {"T1": "t1", "T2": "t2"}
MARKER = "phantom_ixi.json"


def subject_id(index: int) -> str:
    """IXI<nnn>-<site>-<nnnn>: 1-based number, site cycling, a deterministic 4-digit scan number."""
    return f"IXI{index + 1:03d}-{SITES[index % len(SITES)]}-{(index * 7919 + 500) % 9000 + 1000:04d}"


def _save(path: pathlib.Path, data: np.ndarray, affine: np.ndarray, dtype) -> None:
    img = nib.Nifti1Image(data.astype(dtype), affine)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def _meta(num_subjects: int, seed: int, spacing_mm: float, phantom_version: int) -> dict[str, Any]:
    return {
        "generator": "diffseg_jax.phantom_ixi",
        "layout": "IXI",
        "num_subjects": int(num_subjects),
        "seed": int(seed),
        "spacing_mm": float(spacing_mm),
        "version": VERSION,
        "phantom_version": int(phantom_version),
    }


def write_ixi_dataset(
    root: str | os.PathLike[str],
    num_subjects: int = 40,
    seed: int = 0,
    spacing_mm: float = 2.0,
    progress: bool = True,
    phantom_version: int = phantom.PHANTOM_VERSION,
) -> pathlib.Path:
    """Writes the subjects atomically (`phantom.write_atomically`), then phantom_ixi.json (the marker)."""

    def fill(tmp: pathlib.Path) -> None:
        name = pathlib.Path(root).name
        for i in tqdm(range(num_subjects), desc=f"phantom {name}", disable=not progress):
            index = HEALTHY_INDEX_OFFSET + i
            case = phantom.generate_case(index, seed, spacing_mm, healthy=True, version=phantom_version)
            sid = subject_id(i)
            for suffix, key in _FILES.items():
                _save(tmp / f"{sid}-{suffix}.nii.gz", case[key], case["affine"], np.int16)
            _save(tmp / f"{sid}-mask.nii.gz", case["brain"], case["affine"], np.uint8)

    meta = _meta(num_subjects, seed, spacing_mm, phantom_version)
    return phantom.write_atomically(root, fill, MARKER, meta)


def ensure_ixi_dataset(
    cache_dir: str | os.PathLike[str],
    num_subjects: int = 40,
    seed: int = 0,
    spacing_mm: float = 2.0,
    progress: bool = True,
    phantom_version: int = phantom.PHANTOM_VERSION,
) -> pathlib.Path:
    """The cached healthy dataset, generated on first use (locked against concurrent generators)."""
    tag = f"{phantom._spacing_tag(spacing_mm)}{phantom.version_tag(phantom_version)}"
    path = pathlib.Path(cache_dir) / f"phantom-ixi-n{num_subjects}-s{seed}-{tag}"
    meta = _meta(num_subjects, seed, spacing_mm, phantom_version)
    return phantom.ensure_generated(
        path,
        MARKER,
        meta,
        lambda p: write_ixi_dataset(p, num_subjects, seed, spacing_mm, progress, phantom_version),
    )
