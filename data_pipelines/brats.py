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
import functools
import os
import pathlib
import re
import types
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from data_pipelines import brain as brain_lib
from data_pipelines import conventions
from data_pipelines.conventions import Convention

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
LABEL_VALUES: dict[str, tuple[int, ...]] = {name: c.values for name, c in conventions.KNOWN.items()}
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
    makers = [functools.partial(_case_files, folder, cid, wanted, require_seg) for folder, cid in found]
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
