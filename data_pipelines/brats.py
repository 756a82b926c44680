"""BraTS case reader: find, validate and load cases on disk; labels <-> regions.

A case is a folder whose files are ``<case>_<sequence>.nii(.gz)`` or ``<case>-<sequence>.nii(.gz)``, whatever
the case id looks like and however the release spells the sequences, so every BraTS release reads as it comes:

* BraTS 2017-2019: ``Brats18_2013_2_1/Brats18_2013_2_1_{t1,t1ce,t2,flair,seg}.nii.gz``
* BraTS 2020 / 2021: ``BraTS20_Training_001/BraTS20_Training_001_t1.nii.gz``, ``BraTS2021_00000/...``
* BraTS 2023 and later: ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``
* other spellings of the sequences (``T1``, ``T1c``, ``T1GD``, ``T2w``, ``FLAIR``, ...) in any case.

Labels follow the release: 2023 spellings (``t1n/t1c/t2w/t2f``) or ``BraTS-`` ids mean ``{0,1,2,3}``, every
other naming ``{0,1,2,4}`` (BraTS 2017-2021); a layout file (``data.layout``) names any other convention.

Every bad input raises :class:`DataError` with one line naming the offending file or folder, so a
broken download is reported before training starts rather than as a shape error deep in JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import types
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from data_pipelines import brain as brain_lib
from data_pipelines import conventions
from data_pipelines.conventions import Convention
from diffseg_jax.vocabulary import MODALITIES, DataError, sequence_name

LABEL_VALUES: dict[str, tuple[int, ...]] = {name: c.values for name, c in conventions.KNOWN.items()}
SPLITS: tuple[str, ...] = ("train", "val", "test")

_BRATS2023_TAGS = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
# <case><separator><tag>.nii(.gz): the last "_" or "-" before the tag separates it from the case id.
_CASE_FILE = re.compile(r"(?P<case>.+)(?P<sep>[_-])(?P<tag>[A-Za-z0-9]+)\.nii(?:\.gz)?")
# A folder named like a BraTS case is a case even when its files are missing (so the message names them).
_BRATS_ID = re.compile(r"BraTS-[A-Za-z]+-\d+-\d+|(?i:brats)\d{2,4}_[A-Za-z0-9_]+")
_EXTS = (".nii.gz", ".nii")
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError)
LOOKED_FOR = (
    "case folders of <case>_<sequence>.nii.gz (or -<sequence>, .nii) files, sequences spelt as any BraTS "
    "release does (t1/t1ce/t2/flair, t1n/t1c/t2w/t2f, T1/T1c/T2/FLAIR, ...), e.g. "
    "Brats18_2013_2_1/Brats18_2013_2_1_t1.nii.gz or BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz"
)


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """Paths of one case as found on disk (nothing is read yet, so discovery stays cheap).

    ``scheme`` names the layout the case was found in (a BraTS naming, ``msd``, ``nnunet`` or ``custom``);
    ``channels`` gives the volume index of sequences stored together in one 4D file (MSD);
    ``brain_mask`` is a mask file when the layout has one (otherwise the brain comes from the data).
    """

    case_id: str
    folder: pathlib.Path
    images: Mapping[str, pathlib.Path]
    seg: pathlib.Path | None
    scheme: str
    label_convention: Convention | None = None
    brain_mask: pathlib.Path | None = None
    channels: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", types.MappingProxyType(dict(self.images)))
        object.__setattr__(self, "channels", types.MappingProxyType(dict(self.channels)))

    def __hash__(self) -> int:  # the mapping is unhashable; id + folder identify a case
        return hash((self.case_id, self.folder))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # read-only mappings do not pickle; plain dicts do
        fields = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return CaseFiles, tuple(dict(v) if isinstance(v, types.MappingProxyType) else v for v in fields)

    @property
    def convention(self) -> Convention:
        """Label convention: the layout's, else by naming (2020 and 2021 share {0,1,2,4}; 2023 {0,1,2,3})."""
        if self.label_convention is not None:
            return self.label_convention
        return "brats2023" if self.scheme == "brats2023" else "brats2021"

    @property
    def files(self) -> list[pathlib.Path]:
        """Every file the case reads (each once), images first."""
        paths = [*self.images.values(), self.seg, self.brain_mask]
        return list(dict.fromkeys(p for p in paths if p is not None))

    @property
    def patient_id(self) -> str:
        """Patient key for splitting: 2023 ids end in a timepoint that must not leak."""
        if self.scheme == "brats2023":
            return self.case_id.rsplit("-", 1)[0]
        return self.case_id


@dataclasses.dataclass
class CaseVolume:
    """One loaded case: images in MODALITIES order plus the geometry to write results back.

    ``brain`` is the brain mask (from the layout's mask file, else every voxel that differs from its
    sequence's background value), so nothing downstream assumes the background is 0.
    """

    case_id: str
    images: np.ndarray
    available: tuple[bool, ...]
    seg: np.ndarray | None
    affine: np.ndarray
    header: nib.Nifti1Header
    spacing: tuple[float, float, float]
    convention: Convention
    brain: np.ndarray


def _visible(path: pathlib.Path) -> bool:
    return not path.name.startswith(".")


@dataclasses.dataclass(frozen=True)
class _Found:
    """The BraTS-named files of one case in one folder: sequence (or "seg") -> path, and their spelling."""

    case_id: str
    files: Mapping[str, pathlib.Path]
    sep: str
    brats2023: bool


def _named_files(folder: pathlib.Path) -> dict[str, dict[str, list[tuple[str, str, pathlib.Path]]]]:
    """case id -> kind (a sequence or "seg") -> [(separator, tag, path)] of the files right in ``folder``."""
    out: dict[str, dict[str, list[tuple[str, str, pathlib.Path]]]] = {}
    for entry in folder.iterdir():
        if not (_visible(entry) and entry.is_file()) or not (m := _CASE_FILE.fullmatch(entry.name)):
            continue
        tag = m.group("tag")
        kind = "seg" if tag.lower() == "seg" else sequence_name(tag)
        if kind is not None:
            out.setdefault(m.group("case"), {}).setdefault(kind, []).append((m.group("sep"), tag, entry))
    return out


def _case_in(folder: pathlib.Path) -> _Found | None:
    """The case whose BraTS-named files lie directly in ``folder`` (other files are ignored).

    Files named after the folder win; otherwise the files must name exactly one case id.
    """
    named = _named_files(folder)
    if folder.name in named:
        named = {folder.name: named[folder.name]}
    if len(named) > 1:
        raise DataError(f"{folder}: files of several cases in one folder ({', '.join(sorted(named))})")
    if not named:
        return None
    ((case_id, kinds),) = named.items()
    files: dict[str, pathlib.Path] = {}
    for kind, entries in kinds.items():
        if len(entries) > 1:
            names = ", ".join(sorted(p.name for _, _, p in entries))
            raise DataError(f"{folder}: several files for {kind} ({names})")
        files[kind] = entries[0][2]
    tags = {tag.lower() for kind, entries in kinds.items() if kind != "seg" for _, tag, _ in entries}
    brats2023 = case_id.startswith("BraTS-") or (bool(tags) and tags <= set(_BRATS2023_TAGS.values()))
    seps = [sep for entries in kinds.values() for sep, _, _ in entries]
    return _Found(case_id, files, max(set(seps), key=seps.count), brats2023)


def _named_like_a_case(folder: pathlib.Path) -> _Found | None:
    """A folder named like a BraTS case but without its files: a case, so that the message names them."""
    if not _BRATS_ID.fullmatch(folder.name):
        return None
    brats2023 = folder.name.startswith("BraTS-")
    return _Found(folder.name, {}, "-" if brats2023 else "_", brats2023)


def _expected_name(found: _Found, kind: str) -> str:
    tag = _BRATS2023_TAGS.get(kind, kind) if found.brats2023 else kind
    return f"{found.case_id}{found.sep}{tag}.nii.gz"


def _case_files(folder: pathlib.Path, found: _Found, wanted: Sequence[str], require_seg: bool) -> CaseFiles:
    missing = [m for m in wanted if m not in found.files]
    if missing:
        expected = ", ".join(_expected_name(found, m) for m in missing)
        raise DataError(f"{folder}: missing {', '.join(missing)} (expected {expected})")
    seg = found.files.get("seg")
    if require_seg and seg is None:
        raise DataError(f"{folder}: missing segmentation (expected {_expected_name(found, 'seg')})")
    images = {m: found.files[m] for m in wanted}
    scheme = "brats2023" if found.brats2023 else "brats"
    return CaseFiles(case_id=found.case_id, folder=folder, images=images, seg=seg, scheme=scheme)


def find_cases(
    root: str | os.PathLike[str],
    *,
    available: Sequence[str] | None = None,
    require_seg: bool = False,
    problems: list[DataError] | None = None,
) -> list[CaseFiles]:
    """Find BraTS cases under ``root`` (a dataset folder or one case folder), sorted by case id.

    ``available`` lists the modalities that must exist (default: all four); only those are
    loaded later, the others become zero channels. Missing files fail here, before any loading —
    or, when a ``problems`` list is given, the case is left out and its error appended there.
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

    found: list[tuple[pathlib.Path, _Found]] = []
    direct = _case_in(root)
    if direct:
        found.append((root, direct))
    else:
        for sub in sorted(p for p in root.iterdir() if _visible(p) and p.is_dir()):
            case = _case_in(sub) or _named_like_a_case(sub)
            if case is not None:
                found.append((sub, case))
        if not found and (case := _named_like_a_case(root)):
            found.append((root, case))
    if not any(case.files for _, case in found):  # folders named like cases, but no file of any
        raise DataError(
            f"no BraTS cases found in {root}: looked for {LOOKED_FOR}; for another layout, name a layout "
            "file in data.layout (eval.layout for eval.data_root)"
        )
    seen: dict[str, pathlib.Path] = {}
    for folder, case in found:
        if seen.setdefault(case.case_id, folder) != folder:
            raise DataError(f"{folder}: case {case.case_id} also found in {seen[case.case_id]}")
    makers = [functools.partial(_case_files, folder, case, wanted, require_seg) for folder, case in found]
    return sorted(gather(makers, problems), key=lambda c: c.case_id)


def gather(makers: Iterable[Callable[[], CaseFiles]], problems: list[DataError] | None) -> list[CaseFiles]:
    """The cases the makers return; a maker's DataError is raised, or with a ``problems`` list appended
    there (its case left out) so that a large dataset can skip its bad cases."""
    out = []
    for make in makers:
        try:
            out.append(make())
        except DataError as err:
            if problems is None:
                raise
            problems.append(err)
    return out


def _read_error(path: pathlib.Path, exc: BaseException) -> DataError:
    detail = " ".join(str(exc).replace(str(path), path.name).split()) or type(exc).__name__
    return DataError(f"{path}: cannot read as NIfTI ({detail})")


def read_header(path: pathlib.Path) -> nib.Nifti1Image:
    """Open a NIfTI file without reading its voxels (shape and affine come from the header)."""
    try:
        img = nib.load(str(path))
    except _READ_ERRORS as exc:
        raise _read_error(path, exc) from exc
    if not isinstance(img, nib.Nifti1Image):
        raise DataError(f"{path}: not a NIfTI image ({type(img).__name__})")
    return img


def volume_shape(path: pathlib.Path, img: nib.Nifti1Image, channel: int | None = None) -> tuple[int, ...]:
    """The 3D shape the file gives (a 4D file: one volume of it), or a DataError naming the file."""
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and (channel is not None or shape[3] == 1):
        if channel is not None and channel >= shape[3]:
            raise DataError(f"{path}: has {shape[3]} volume(s), volume {channel} was asked for")
        shape = shape[:3]
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {shape}")
    return shape


def _read(path: pathlib.Path, channel: int | None = None) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Read one NIfTI volume (of a 4D file: volume ``channel``) as a 3D array; failures -> DataError."""
    img = read_header(path)
    volume_shape(path, img, channel)
    try:
        data = np.asanyarray(img.dataobj)
    except _READ_ERRORS as exc:
        raise _read_error(path, exc) from exc
    if data.ndim == 4:
        data = data[..., 0 if channel is None else channel]
    return img, data


def _check_finite(path: pathlib.Path, data: np.ndarray) -> None:
    if np.issubdtype(data.dtype, np.floating):
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise DataError(f"{path}: {bad} NaN/Inf voxel(s)")


def _fmt(values: Sequence[float]) -> str:
    return "{" + ",".join(str(int(v)) if float(v).is_integer() else str(v) for v in values) + "}"


def _check_labels(path: pathlib.Path, data: np.ndarray, convention: Convention) -> np.ndarray:
    """Validate segmentation values against the case's convention and return them as uint8."""
    _check_finite(path, data)
    if np.issubdtype(data.dtype, np.floating) and not np.array_equal(data, np.round(data)):
        raise DataError(f"{path}: segmentation has non-integer values")
    known = _resolve(convention)
    allowed = known.values
    if data.min() >= 0 and data.max() <= 255:  # fast path: bincount instead of a full sort
        present = np.flatnonzero(np.bincount(data.astype(np.uint8).ravel()))
    else:
        present = np.unique(data)
    bad = [v for v in present.tolist() if v not in allowed]
    if bad:
        name = known.display_name
        raise DataError(f"{path}: labels {_fmt(bad)} not in {name} convention {_fmt(allowed)}")
    return data.astype(np.uint8)


def check_headers(case: CaseFiles) -> dict[pathlib.Path, nib.Nifti1Image]:
    """Open every file of a case without reading voxels: readable NIfTI, 3D volumes, one shape, one affine."""
    if not case.images:
        raise DataError(f"{case.folder}: no image files to load")
    channel_of = {case.images[m]: c for m, c in case.channels.items()}
    headers = {path: read_header(path) for path in case.files}
    shapes = {path: volume_shape(path, img, channel_of.get(path)) for path, img in headers.items()}
    first = case.files[0]
    for path in case.files[1:]:
        if shapes[path] != shapes[first]:
            raise DataError(f"{path}: shape {shapes[path]} differs from {shapes[first]} of {first.name}")
        if not np.allclose(headers[path].affine, headers[first].affine, atol=1e-3):
            raise DataError(f"{path}: affine differs from that of {first.name}")
    return headers


def load_case(case: CaseFiles) -> CaseVolume:
    """Load and validate one case: all volumes must be 3D, finite, on one grid and one affine.

    A 4D file holding several sequences (MSD) is decompressed once.
    """
    headers = check_headers(case)
    read: dict[pathlib.Path, np.ndarray] = {}
    for path, img in headers.items():
        try:
            read[path] = np.asanyarray(img.dataobj)
        except _READ_ERRORS as exc:
            raise _read_error(path, exc) from exc

    def volume(path: pathlib.Path, channel: int | None = None) -> np.ndarray:
        data = read[path]
        return data[..., 0 if channel is None else channel] if data.ndim == 4 else data

    ref_img = headers[case.files[0]]
    ref_shape = volume_shape(case.files[0], ref_img, case.channels.get(next(iter(case.images))))
    images = np.zeros((*ref_shape, len(MODALITIES)), dtype=np.float32)
    for channel, modality in enumerate(MODALITIES):
        if modality in case.images:
            path = case.images[modality]
            images[..., channel] = volume(path, case.channels.get(modality))
            _check_finite(path, images[..., channel])
    seg = None
    if case.seg is not None:
        seg = _check_labels(case.seg, volume(case.seg), case.convention)
    available = tuple(m in case.images for m in MODALITIES)
    if case.brain_mask is not None:
        mask = np.asarray(volume(case.brain_mask), np.float32)
        _check_finite(case.brain_mask, mask)
        brain = mask > 0.5 * mask.max() if mask.max() > 0 else mask > 0
        if not brain.any():
            raise DataError(f"{case.brain_mask}: empty brain mask")
    else:
        brain = brain_lib.brain_mask(images)
    header = ref_img.header.copy()
    spacing = tuple(float(z) for z in header.get_zooms()[:3])
    return CaseVolume(
        case_id=case.case_id,
        images=images,
        available=available,
        seg=seg,
        affine=np.array(ref_img.affine, dtype=np.float64),
        header=header,
        spacing=spacing,  # type: ignore[arg-type]
        convention=case.convention,
        brain=brain,
    )


def _resolve(convention: Convention) -> conventions.LabelConvention:
    try:
        return conventions.resolve(convention)
    except conventions.ConventionError as err:
        raise DataError(str(err)) from None


def labels_to_regions(seg: np.ndarray, convention: Convention) -> np.ndarray:
    """Labels -> nested regions [..., 3] (WT, TC, ET), the form BraTS is evaluated on."""
    return _resolve(convention).regions(seg)


def regions_to_labels(regions: np.ndarray, convention: Convention) -> np.ndarray:
    """Regions [..., 3] -> uint8 labels in the convention, read hierarchically so always consistent."""
    known = _resolve(convention)
    regions = np.asarray(regions)
    if regions.ndim < 1 or regions.shape[-1] != 3:
        raise DataError(f"regions: expected a last axis of size 3 (WT, TC, ET), got {regions.shape}")
    return known.labels(regions)
