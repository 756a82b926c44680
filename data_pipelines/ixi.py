"""Reader for IXI-layout folders of healthy subjects (T1/T2/PD) with brain masks.

Real IXI unpacks to flat folders of IXI<nnn>-<site>-<nnnn>-<T1|T2|PD>.nii.gz; the folder is searched
recursively, so one folder per sequence works too. The anomaly protocol needs a brain mask per subject:
<subject>-<mask_suffix>.nii.gz (default suffix 'mask'), or mask_suffix='' to use the voxels > 0 of the first
sequence (skull-stripped data). The sequences must be co-registered (same shape and affine), as after the
usual registration to a template. Every problem stops with one DataError line naming the file.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Sequence

import numpy as np

from data_pipelines.brats import DataError, _check_finite, _read

_FILE = re.compile(r"^(IXI\d+-[A-Za-z]+-\d+)-(T1|T2|PD)\.nii(\.gz)?$")
SEQUENCES = ("t1", "t2", "pd")


@dataclasses.dataclass(frozen=True)
class SubjectFiles:
    subject_id: str
    images: dict[str, pathlib.Path]  # sequence (t1/t2/pd) -> file
    mask: pathlib.Path | None


def _mask_file(folder: pathlib.Path, subject: str, suffix: str) -> pathlib.Path | None:
    for ext in (".nii.gz", ".nii"):
        path = folder / f"{subject}-{suffix}{ext}"
        if path.is_file():
            return path
    return None


def find_subjects(
    root: str | os.PathLike[str], sequences: Sequence[str] = ("t1", "t2"), mask_suffix: str = "mask"
) -> list[SubjectFiles]:
    """Subjects under root that have every wanted sequence (and a mask file when mask_suffix is set)."""
    wanted = tuple(s.lower() for s in sequences)
    if not wanted or any(s not in SEQUENCES for s in wanted) or len(set(wanted)) != len(wanted):
        raise DataError(f"sequences={list(sequences)}: expected names from {SEQUENCES}")
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: {'not a folder' if root.exists() else 'folder does not exist'}")
    found: dict[str, dict[str, pathlib.Path]] = {}
    for path in sorted(root.rglob("IXI*")):
        match = _FILE.match(path.name)
        if match and path.is_file():
            files = found.setdefault(match.group(1), {})
            sequence = match.group(2).lower()
            if sequence in files:
                raise DataError(
                    f"{path}: {match.group(1)} {sequence.upper()} also found at {files[sequence]}"
                )
            files[sequence] = path
    if not found:
        raise DataError(f"no IXI files found in {root} (expected e.g. IXI002-Guys-0828-T1.nii.gz)")
    subjects = []
    for sid in sorted(found):
        files = found[sid]
        missing = [s for s in wanted if s not in files]
        if missing:
            folder = next(iter(files.values())).parent
            expected = ", ".join(f"{sid}-{s.upper()}.nii.gz" for s in missing)
            raise DataError(f"{folder}: subject {sid} lacks {', '.join(missing)} (expected {expected})")
        first = files[wanted[0]]
        mask = None
        if mask_suffix:
            mask = _mask_file(first.parent, sid, mask_suffix)
            if mask is None:
                raise DataError(
                    f"{first.parent / f'{sid}-{mask_suffix}.nii.gz'}: brain mask missing "
                    "(set data.mask_suffix='' for skull-stripped scans)"
                )
        subjects.append(SubjectFiles(sid, {s: files[s] for s in wanted}, mask))
    return subjects


def load_subject(files: SubjectFiles) -> dict[str, np.ndarray]:
    """{sequence: float32 volume, 'brain': bool, 'affine'}; one grid for all, finite, non-empty brain."""
    out: dict[str, np.ndarray] = {}
    ref_path, ref_img, ref_shape = None, None, None
    paths = list(files.images.items()) + ([("brain", files.mask)] if files.mask is not None else [])
    for name, path in paths:
        img, data = _read(path)
        _check_finite(path, data)
        if ref_img is None:
            ref_path, ref_img, ref_shape = path, img, data.shape
        elif data.shape != ref_shape:
            raise DataError(f"{path}: shape {data.shape} differs from {ref_shape} of {ref_path.name}")
        elif not np.allclose(img.affine, ref_img.affine, atol=1e-3):
            raise DataError(f"{path}: affine differs from that of {ref_path.name} (register the sequences)")
        out[name] = np.asarray(data, np.float32)
    brain = out.pop("brain", None)
    first = next(iter(files.images))
    out["brain"] = (brain > 0) if brain is not None else (out[first] > 0)
    if not out["brain"].any():
        raise DataError(f"{files.mask or files.images[first]}: empty brain mask")
    out["affine"] = np.asarray(ref_img.affine, np.float64)
    return out
