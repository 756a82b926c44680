"""BraTS case reader: find, validate and load cases on disk; labels <-> regions.

Three real naming schemes are understood (each case is a folder named by its case id):

* BraTS 2020: ``BraTS20_Training_001/BraTS20_Training_001_{t1,t1ce,t2,flair,seg}.nii.gz``
* BraTS 2021: ``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``
* BraTS 2023: ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``

Every bad input raises :class:`DataError` with one line naming the offending file or folder, so a
broken download is reported before training starts rather than as a shape error deep in JAX.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import types
import zlib
from collections.abc import Mapping, Sequence

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
LABEL_VALUES: dict[str, tuple[int, ...]] = {"brats2021": (0, 1, 2, 4), "brats2023": (0, 1, 2, 3)}
SPLITS: tuple[str, ...] = ("train", "val", "test")

_SAME = {m: m for m in MODALITIES}
# scheme -> (case id pattern, separator before the suffix, canonical modality -> file suffix)
_SCHEMES: dict[str, tuple[re.Pattern[str], str, dict[str, str]]] = {
    "brats2020": (re.compile(r"BraTS20_[A-Za-z]+_\d+"), "_", _SAME),
    "brats2021": (re.compile(r"BraTS2021_\d+"), "_", _SAME),
    "brats2023": (
        re.compile(r"BraTS-[A-Z]+-\d+-\d+"),
        "-",
        {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"},
    ),
}
_EXTS = (".nii.gz", ".nii")
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError)


class DataError(ValueError):
    """Bad data on disk; the message is one line naming the file (or folder) and the problem."""


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """Paths of one case as found on disk (nothing is read yet, so discovery stays cheap)."""

    case_id: str
    folder: pathlib.Path
    images: Mapping[str, pathlib.Path]
    seg: pathlib.Path | None
    scheme: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", types.MappingProxyType(dict(self.images)))

    def __hash__(self) -> int:  # the mapping is unhashable; id + folder identify a case
        return hash((self.case_id, self.folder))

    @property
    def convention(self) -> str:
        """Label convention: 2020 and 2021 share labels {0,1,2,4}; 2023 uses {0,1,2,3}."""
        return "brats2023" if self.scheme == "brats2023" else "brats2021"

    @property
    def patient_id(self) -> str:
        """Patient key for splitting: 2023 ids end in a timepoint that must not leak."""
        if self.scheme == "brats2023":
            return self.case_id.rsplit("-", 1)[0]
        return self.case_id


@dataclasses.dataclass
class CaseVolume:
    """One loaded case: images in MODALITIES order plus the geometry to write results back."""

    case_id: str
    images: np.ndarray
    available: tuple[bool, ...]
    seg: np.ndarray | None
    affine: np.ndarray
    header: nib.Nifti1Header
    spacing: tuple[float, float, float]
    convention: str


def _scheme_of(case_id: str) -> str | None:
    for scheme, (pattern, _, _) in _SCHEMES.items():
        if pattern.fullmatch(case_id):
            return scheme
    return None


def _visible(path: pathlib.Path) -> bool:
    return not path.name.startswith(".")


_FILE_RES = [
    re.compile(rf"({pat.pattern}){re.escape(sep)}(?:{'|'.join([*sfx.values(), 'seg'])})\.nii(\.gz)?")
    for pat, sep, sfx in _SCHEMES.values()
]


def _case_id_in(folder: pathlib.Path) -> str | None:
    """The case id named by BraTS files directly inside ``folder`` (other files are ignored)."""
    ids = {
        m.group(1)
        for entry in folder.iterdir()
        if _visible(entry) and entry.is_file()
        for rx in _FILE_RES
        if (m := rx.fullmatch(entry.name))
    }
    if len(ids) > 1:
        raise DataError(f"{folder}: files of several cases in one folder ({', '.join(sorted(ids))})")
    return ids.pop() if ids else None


def _find_file(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
    for ext in _EXTS:
        path = folder / f"{stem}{ext}"
        if path.is_file():
            return path
    return None


def _case_files(folder: pathlib.Path, case_id: str, wanted: Sequence[str], require_seg: bool) -> CaseFiles:
    scheme = _scheme_of(case_id)
    assert scheme is not None
    _, sep, suffixes = _SCHEMES[scheme]
    images, missing = {}, []
    for modality in wanted:
        stem = f"{case_id}{sep}{suffixes[modality]}"
        path = _find_file(folder, stem)
        if path is None:
            missing.append((modality, f"{stem}.nii.gz"))
        else:
            images[modality] = path
    if missing:
        mods = ", ".join(m for m, _ in missing)
        expected = ", ".join(f for _, f in missing)
        raise DataError(f"{folder}: missing {mods} (expected {expected})")
    seg = _find_file(folder, f"{case_id}{sep}seg")
    if require_seg and seg is None:
        raise DataError(f"{folder}: missing segmentation (expected {case_id}{sep}seg.nii.gz)")
    return CaseFiles(case_id=case_id, folder=folder, images=images, seg=seg, scheme=scheme)


def find_cases(
    root: str | os.PathLike[str],
    *,
    available: Sequence[str] | None = None,
    require_seg: bool = False,
) -> list[CaseFiles]:
    """Find BraTS cases under ``root`` (a dataset folder or one case folder), sorted by case id.

    ``available`` lists the modalities that must exist (default: all four); only those are
    loaded later, the others become zero channels. Missing files fail here, before any loading.
    """
    wanted = MODALITIES if available is None else tuple(available)
    unknown = [m for m in wanted if m not in MODALITIES]
    if unknown or not wanted or len(set(wanted)) != len(wanted):
        raise DataError(f"available={list(wanted)}: expected distinct names from {MODALITIES}")
    root = pathlib.Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")

    found: list[tuple[pathlib.Path, str]] = []
    direct = _case_id_in(root)
    if direct:
        found.append((root, direct))
    else:
        for sub in sorted(p for p in root.iterdir() if _visible(p) and p.is_dir()):
            case_id = _case_id_in(sub) or (sub.name if _scheme_of(sub.name) else None)
            if case_id:
                found.append((sub, case_id))
        if not found and _scheme_of(root.name):
            found.append((root, root.name))
    if not found:
        raise DataError(
            f"no BraTS cases found in {root} (expected <case>/<case>_t1.nii.gz, e.g. "
            "BraTS2021_00000/BraTS2021_00000_t1.nii.gz or "
            "BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz)"
        )
    seen: dict[str, pathlib.Path] = {}
    for folder, case_id in found:
        if seen.setdefault(case_id, folder) != folder:
            raise DataError(f"{folder}: case {case_id} also found in {seen[case_id]}")
    cases = [_case_files(folder, cid, wanted, require_seg) for folder, cid in found]
    return sorted(cases, key=lambda c: c.case_id)


def _read(path: pathlib.Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Read one NIfTI volume as a 3D array, turning every reader failure into a DataError."""
    try:
        img = nib.load(str(path))
        if not isinstance(img, nib.Nifti1Image):
            raise DataError(f"{path}: not a NIfTI image ({type(img).__name__})")
        data = np.asanyarray(img.dataobj)
    except DataError:
        raise
    except _READ_ERRORS as exc:
        detail = " ".join(str(exc).replace(str(path), path.name).split()) or type(exc).__name__
        raise DataError(f"{path}: cannot read as NIfTI ({detail})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {tuple(data.shape)}")
    return img, data


def _check_finite(path: pathlib.Path, data: np.ndarray) -> None:
    if np.issubdtype(data.dtype, np.floating):
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise DataError(f"{path}: {bad} NaN/Inf voxel(s)")


def _fmt(values: Sequence[float]) -> str:
    return "{" + ",".join(str(int(v)) if float(v).is_integer() else str(v) for v in values) + "}"


def _check_labels(path: pathlib.Path, data: np.ndarray, convention: str) -> np.ndarray:
    """Validate segmentation values against the case's convention and return them as uint8."""
    _check_finite(path, data)
    if np.issubdtype(data.dtype, np.floating) and not np.array_equal(data, np.round(data)):
        raise DataError(f"{path}: segmentation has non-integer values")
    allowed = LABEL_VALUES[convention]
    if data.min() >= 0 and data.max() <= 255:  # fast path: bincount instead of a full sort
        present = np.flatnonzero(np.bincount(data.astype(np.uint8).ravel()))
    else:
        present = np.unique(data)
    bad = [v for v in present.tolist() if v not in allowed]
    if bad:
        name = "BraTS 2023" if convention == "brats2023" else "BraTS 2021"
        raise DataError(f"{path}: labels {_fmt(bad)} not in {name} convention {_fmt(allowed)}")
    return data.astype(np.uint8)


def load_case(case: CaseFiles) -> CaseVolume:
    """Load and validate one case: all volumes must be 3D, finite, on one grid and one affine."""
    channels = [(c, case.images[m]) for c, m in enumerate(MODALITIES) if m in case.images]
    if not channels:
        raise DataError(f"{case.folder}: no image files to load")
    paths = [path for _, path in channels] + ([case.seg] if case.seg is not None else [])
    volumes = [(path, *_read(path)) for path in paths]
    ref_path, ref_img, ref_data = volumes[0]
    for path, img, data in volumes[1:]:
        if data.shape != ref_data.shape:
            raise DataError(f"{path}: shape {data.shape} differs from {ref_data.shape} of {ref_path.name}")
        if not np.allclose(img.affine, ref_img.affine, atol=1e-3):
            raise DataError(f"{path}: affine differs from that of {ref_path.name}")
    images = np.zeros((*ref_data.shape, len(MODALITIES)), dtype=np.float32)
    for (channel, path), (_, _, data) in zip(channels, volumes, strict=False):
        images[..., channel] = data
        _check_finite(path, images[..., channel])
    seg = None
    if case.seg is not None:
        seg = _check_labels(case.seg, volumes[-1][2], case.convention)
    header = ref_img.header.copy()
    spacing = tuple(float(z) for z in header.get_zooms()[:3])
    return CaseVolume(
        case_id=case.case_id,
        images=images,
        available=tuple(m in case.images for m in MODALITIES),
        seg=seg,
        affine=np.array(ref_img.affine, dtype=np.float64),
        header=header,
        spacing=spacing,  # type: ignore[arg-type]
        convention=case.convention,
    )


def _et_label(convention: str) -> int:
    if convention not in LABEL_VALUES:
        raise DataError(f"unknown label convention {convention!r} (expected one of {list(LABEL_VALUES)})")
    return LABEL_VALUES[convention][3]


def labels_to_regions(seg: np.ndarray, convention: str) -> np.ndarray:
    """Labels -> nested regions [..., 3] (WT, TC, ET), the form BraTS is evaluated on."""
    et = _et_label(convention)
    seg = np.asarray(seg)
    wt = np.isin(seg, LABEL_VALUES[convention][1:])
    tc = (seg == 1) | (seg == et)
    return np.stack([wt, tc, seg == et], axis=-1)


def regions_to_labels(regions: np.ndarray, convention: str) -> np.ndarray:
    """Regions [..., 3] -> uint8 labels, read hierarchically so the result is always consistent."""
    et = _et_label(convention)
    regions = np.asarray(regions)
    if regions.ndim < 1 or regions.shape[-1] != 3:
        raise DataError(f"regions: expected a last axis of size 3 (WT, TC, ET), got {regions.shape}")
    wt = regions[..., 0].astype(bool)
    tc = wt & regions[..., 1].astype(bool)
    enh = tc & regions[..., 2].astype(bool)
    labels = np.zeros(regions.shape[:-1], dtype=np.uint8)
    labels[wt] = 2
    labels[tc] = 1
    labels[enh] = et
    return labels


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
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
    counts = _split_counts(len(patients), fr)
    out: dict[str, list[CaseFiles]] = {}
    start = 0
    for name, count in zip(SPLITS, counts, strict=True):
        chosen = [c for i in order[start : start + count] for c in by_patient[patients[i]]]
        out[name] = sorted(chosen, key=lambda c: c.case_id)
        start += count
    return out
