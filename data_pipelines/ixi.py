"""Reader for IXI-layout folders of healthy subjects (T1/T2/PD), with or without brain masks.

Real IXI unpacks to flat folders of IXI<nnn>-<site>-<nnnn>-<T1|T2|PD>.nii.gz; the folder is searched
recursively, so one folder per sequence works too. The anomaly protocol needs a brain per subject: the mask
file <subject>-<mask_suffix>.nii.gz (default suffix 'mask') when there is one, otherwise the voxels that are
not background in every sequence (skull-stripped data). IXI downloads are not co-registered (the T1 is
sagittal, the T2 axial, on different grids): ``resample`` ('first' or '1mm', see
:mod:`data_pipelines.resample`) brings them onto one grid by their affines; without it, different grids
stop with an error. Every problem stops with one DataError line naming the file.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Sequence

import numpy as np

from data_pipelines import resample as resample_lib
from data_pipelines.brain import background_value
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
    """Subjects under root that have every wanted sequence, with their mask file where there is one."""
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
        mask = _mask_file(first.parent, sid, mask_suffix) if mask_suffix else None
        subjects.append(SubjectFiles(sid, {s: files[s] for s in wanted}, mask))
    return subjects


def load_subject(files: SubjectFiles, resample: str = "") -> dict[str, np.ndarray]:
    """{sequence: float32 volume, 'brain': bool, 'affine'}: one grid for all, finite, a non-empty brain.

    ``resample`` '' requires one grid already; 'first' / '1mm' resample every sequence (linear) and the
    mask (nearest) onto the grid :func:`data_pipelines.resample.target_grid` derives from the first.
    """
    if resample not in resample_lib.MODES:
        raise DataError(f"data.resample={resample!r}: expected one of {resample_lib.MODES}")
    paths = list(files.images.items()) + ([("brain", files.mask)] if files.mask is not None else [])
    read = {}
    for name, path in paths:
        img, data = _read(path)
        _check_finite(path, data)
        read[name] = (path, img, data)
    first_path, first_img, first_data = read[next(iter(files.images))]
    if resample:
        shape, affine = resample_lib.target_grid(first_img, resample)
    else:
        shape, affine = first_data.shape, np.asarray(first_img.affine, np.float64)
    out: dict[str, np.ndarray] = {}
    for name, (path, img, data) in read.items():
        if resample:
            order = 0 if name == "brain" else 1
            out[name] = resample_lib.resample_to(data, img.affine, shape, affine, order=order)
        elif data.shape != shape:
            raise DataError(
                f"{path}: shape {data.shape} differs from {shape} of {first_path.name} "
                "(set data.resample=first or 1mm to resample onto one grid)"
            )
        elif not np.allclose(img.affine, affine, atol=1e-3):
            raise DataError(
                f"{path}: affine differs from that of {first_path.name} "
                "(set data.resample=first or 1mm to resample onto one grid)"
            )
        else:
            out[name] = np.asarray(data, np.float32)
    brain = out.pop("brain", None)
    if brain is not None:
        out["brain"] = brain > 0
    else:  # skull-stripped: brain where no sequence is background
        out["brain"] = np.all([out[s] != background_value(out[s]) for s in files.images], axis=0)
    if not out["brain"].any():
        raise DataError(f"{files.mask or first_path}: empty brain mask")
    out["affine"] = np.asarray(affine, np.float64)
    return out
