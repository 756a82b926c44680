"""Everything a run writes for people and tools: text, JSON, CSV, NIfTI and overlay PNGs, atomically.

Each file is written to a temporary name in its target folder and renamed over the target, so a killed
job never leaves a half-written table or volume behind. NIfTI outputs keep the geometry of the scan they
were computed from (its affine and header), so they open over it in ITK-SNAP or 3D Slicer.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import nibabel as nib
import numpy as np
import numpy.typing as npt

from data_pipelines.brats import DataError

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
Panel = tuple[np.ndarray, str, str]  # (2D image, title, matplotlib colormap)
# The nested regions drawn over a scan, each voxel in the colour of its innermost region.
REGION_LEGEND = (
    ("oedema (WT − TC)", "#2ca02c"),
    ("core (TC − ET)", "#d62728"),
    ("enhancing (ET)", "#ffd700"),
)


@dataclasses.dataclass(frozen=True)
class RegionOverlay:
    """A panel of nested regions [H, W, 3] (WT, TC, ET) drawn over a 2D scan, with the regions' legend."""

    scan: np.ndarray
    regions: np.ndarray
    title: str

    def innermost(self) -> np.ma.MaskedArray:
        """0 oedema, 1 core, 2 enhancing; masked outside the whole tumour."""
        wt, tc, et = (self.regions[..., i].astype(bool) for i in range(3))
        level = np.where(et, 2, np.where(tc, 1, 0))
        return np.ma.masked_where(~wt, level)


class OnGrid(Protocol):
    """What a NIfTI output copies its geometry from (a loaded case: `data_pipelines.brats.CaseVolume`)."""

    affine: np.ndarray
    header: nib.Nifti1Header
    images: np.ndarray


def _atomic(path: pathlib.Path, write: Callable[[pathlib.Path], Any], suffix: str = "") -> pathlib.Path:
    """`write(tmp)` to a temporary name beside `path`, then renamed over it: `path` is whole or as it was.

    A failed write (a full disk, a read-only folder) leaves no temporary file and raises an OSError that
    names `path`, for a one-line message.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
        os.close(fd)
        tmp = pathlib.Path(name)
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike[str], text: str) -> pathlib.Path:
    """Writes `text` to `path` atomically (parents created)."""
    return _atomic(pathlib.Path(path), lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike[str], value: Any) -> pathlib.Path:
    return write_text(path, json.dumps(value, indent=2) + "\n")


def write_csv(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> pathlib.Path:
    """One row per mapping; the columns are the union of their keys in first-seen order."""
    rows = list(rows)
    fields = list(dict.fromkeys(k for row in rows for k in row)) or ["case_id"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())


def rounded(scores: Mapping[str, float], prefix: str = "", digits: int = 6) -> dict[str, float]:
    """Scores as table cells: `prefix` + name -> value rounded to `digits`."""
    return {f"{prefix}{key}": round(float(value), digits) for key, value in scores.items()}


def _storable(array: np.ndarray) -> np.ndarray:
    """NIfTI has no bool and nibabel refuses int64 by default: pick the smallest type that fits."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for dt in (np.uint8, np.int16, np.int32):
            if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
                return array.astype(dt)
    return array


def _save_image(image: nib.Nifti1Image, path: pathlib.Path) -> pathlib.Path:
    ext = next((e for e in NIFTI_EXTENSIONS if path.name.endswith(e)), None)
    if ext is None:
        raise DataError(f"{path}: output name must end in .nii.gz or .nii")
    return _atomic(path, lambda tmp: nib.save(image, tmp), suffix=ext)  # nibabel: format by extension


def save_nifti(
    array: np.ndarray,
    like: OnGrid,
    path: str | os.PathLike[str],
    dtype: npt.DTypeLike | None = None,
) -> pathlib.Path:
    """Writes `array` on the grid of the scan `like` (same affine and header), atomically."""
    path = pathlib.Path(path)
    data = _storable(np.asarray(array) if dtype is None else np.asarray(array).astype(dtype))
    grid = like.images.shape[:3]
    if data.shape[:3] != grid:
        raise DataError(f"{path}: array shape {data.shape} does not match case grid {grid}")
    header = like.header.copy()
    header.set_data_dtype(data.dtype)
    return _save_image(nib.Nifti1Image(data, like.affine, header=header), path)


def save_nifti_on_affine(
    array: np.ndarray, affine: np.ndarray, path: str | os.PathLike[str], dtype: npt.DTypeLike
) -> pathlib.Path:
    """Writes an [X, Y, Z] volume of a resampled grid with that grid's affine (mm units), atomically."""
    image = nib.Nifti1Image(_storable(np.asarray(array).astype(dtype)), affine)
    image.header.set_xyzt_units("mm")
    return _save_image(image, pathlib.Path(path))


def save_overlay(
    path: str | os.PathLike[str], title: str, panels: list[Panel | RegionOverlay]
) -> pathlib.Path:
    """One PNG row of 2D panels (radiological view: rotated 90°), atomically; region panels draw the regions
    over their scan, with a legend under the row."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure  # no pyplot: a notebook's backend stays as it was
    from matplotlib.patches import Patch

    fig = Figure(figsize=(2.2 * len(panels), 2.9))
    colours = ListedColormap([colour for _, colour in REGION_LEGEND])
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        if isinstance(panel, RegionOverlay):
            ax.imshow(np.rot90(panel.scan), cmap="gray")
            ax.imshow(
                np.rot90(panel.innermost()), cmap=colours, vmin=0, vmax=2, alpha=0.6, interpolation="nearest"
            )
            name = panel.title
        else:
            image, name, cmap = panel
            shown = ax.imshow(np.rot90(image), cmap=cmap)
            if cmap != "gray":  # a map of values (uncertainty, anomaly): its scale
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    if any(isinstance(p, RegionOverlay) for p in panels):
        handles = [Patch(color=colour, label=label) for label, colour in REGION_LEGEND]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
    else:
        fig.tight_layout()
    return _atomic(pathlib.Path(path), lambda tmp: fig.savefig(tmp, dpi=80), suffix=".png")


def save_reliability_diagram(
    path: str | os.PathLike[str], calibration: dict[str, dict[str, list[float]]], title: str
) -> pathlib.Path:
    """Observed frequency against mean predicted probability per bin, one line per region, atomically."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6, 3.4))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    for region, bins in calibration.items():
        count = np.asarray(bins["count"], np.float64)
        filled = count > 0
        confidence = np.asarray(bins["sum_prob"])[filled] / count[filled]
        frequency = np.asarray(bins["sum_ref"])[filled] / count[filled]
        ax.plot(confidence, frequency, marker="o", markersize=3, label=region.upper())
    ax.set(xlabel="predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _atomic(pathlib.Path(path), lambda tmp: fig.savefig(tmp, dpi=100), suffix=".png")
