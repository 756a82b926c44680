"""Volumes for the anomaly detectors: healthy subjects (IXI layout) and tumour cases (BraTS layout),
preprocessed the same way (the pDDPM protocol): crop to the brain, scale each sequence to [0, 1] by its
1st-99th percentiles inside the brain, resample to a fixed grid, axial slices.

Arrays are [D, H, W, M]: D axial slices (the NIfTI's third axis), H and W its first two axes, M sequences.
Each volume keeps the affine of its resampled grid, so a map written as NIfTI ([H, W, D], `to_nifti_order`)
opens over the source scan. Preprocessed splits are cached per input and setting (.npz, written atomically).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile
from collections.abc import Sequence

import ml_collections
import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from data_pipelines import brats, case_splits, healthy_slices, ixi, layouts, phantom_ixi, sources

CACHE_VERSION = 2


@dataclasses.dataclass
class AnomalyVolume:
    case_id: str
    image: np.ndarray  # [D, H, W, M] float32 in [0, 1], 0 outside the brain
    brain: np.ndarray  # [D, H, W] bool
    label: np.ndarray | None  # [D, H, W] bool (whole tumour); None for healthy subjects
    affine: np.ndarray  # 4x4 of the resampled grid ([H, W, D] voxel order)
    source: pathlib.Path
    slices: np.ndarray | None = None  # healthy slices of a tumour case (`healthy_slices`); None = every slice


def usable_brain(volume: AnomalyVolume) -> np.ndarray:
    """The brain [D, H, W] on the slices the volume offers (all, or its healthy slices)."""
    if volume.slices is None:
        return volume.brain
    keep = np.zeros(len(volume.brain), bool)
    keep[volume.slices] = True
    return volume.brain & keep[:, None, None]


def to_nifti_order(volume: np.ndarray) -> np.ndarray:
    """[D, H, W, ...] -> [H, W, D, ...], the voxel order of the volume's affine."""
    return np.moveaxis(volume, 0, 2)


def _resample(volume: np.ndarray, shape: tuple[int, int, int], order: int) -> np.ndarray:
    """Cell-centred resampling: output voxel i samples input position (i + 0.5) * n_in / n_out - 0.5."""
    coords = np.meshgrid(
        *[
            (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
            for n_in, n_out in zip(volume.shape, shape, strict=True)
        ],
        indexing="ij",
    )
    return ndimage.map_coordinates(volume.astype(np.float32), coords, order=order, mode="nearest")


def preprocess(
    images: dict[str, np.ndarray],
    brain: np.ndarray,
    grid: tuple[int, int, int],
    label: np.ndarray | None = None,
    affine: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """(image [D,H,W,M], brain [D,H,W], label [D,H,W] or None, affine of the new grid); grid = (H, W, D)."""
    brain = np.asarray(brain, bool)
    if not brain.any():
        raise ValueError("empty brain mask")
    box = healthy_slices.brain_box(brain)
    crop_brain = brain[box]
    scaled = []
    for volume in images.values():
        crop = np.asarray(volume, np.float32)[box]
        lo, hi = np.percentile(crop[crop_brain], [1.0, 99.0])
        unit = np.clip((crop - lo) / max(hi - lo, 1e-6), 0.0, 1.0) * crop_brain
        scaled.append(_resample(unit, grid, order=1))
    new_brain = _resample(crop_brain, grid, order=1) > 0.5
    image = np.stack(scaled, axis=-1) * new_brain[..., None]
    new_label = None if label is None else _resample(np.asarray(label)[box] > 0, grid, order=1) > 0.5
    step = np.array([c.stop - c.start for c in box], np.float64) / np.array(grid, np.float64)
    start = np.array([c.start for c in box], np.float64)
    index_map = np.eye(4)
    index_map[:3, :3] = np.diag(step)
    index_map[:3, 3] = start + 0.5 * step - 0.5
    new_affine = (np.eye(4) if affine is None else np.asarray(affine, np.float64)) @ index_map
    axial_first = lambda a: None if a is None else np.moveaxis(a, 2, 0)  # noqa: E731
    return axial_first(image).astype(np.float32), axial_first(new_brain), axial_first(new_label), new_affine


def _healthy_volumes(config, subjects: Sequence[ixi.SubjectFiles], progress: bool) -> list[AnomalyVolume]:
    out = []
    for files in tqdm(subjects, desc="preprocessing healthy", disable=not progress):
        data = ixi.load_subject(files, config.data.get("resample", ""))
        images = {s: data[s] for s in config.data.sequences}
        image, brain, _, affine = preprocess(
            images, data["brain"], tuple(config.data.grid), None, data["affine"]
        )
        out.append(
            AnomalyVolume(
                files.subject_id, image, brain, None, affine, files.images[config.data.sequences[0]]
            )
        )
    return out


def _tumour_volumes(config, cases: Sequence[brats.CaseFiles], progress: bool) -> list[AnomalyVolume]:
    """The labelled cases on the grid, each with its healthy slices (`data.healthy_margin_mm` from tumour)."""
    out = []
    margin_mm = float(config.data.get("healthy_margin_mm", 0.0))
    for case in tqdm(cases, desc="preprocessing tumour", disable=not progress):
        volume = brats.load_case(case)
        if volume.seg is None:
            raise brats.DataError(f"{case.folder}: no reference segmentation; the detectors are scored on it")
        absent = [s for s in config.data.sequences if s not in case.images]
        if absent:
            raise brats.DataError(f"{case.folder}: the anomaly detectors need {', '.join(absent)}")
        index = {m: i for i, m in enumerate(brats.MODALITIES)}
        images = {s: volume.images[..., index[s]] for s in config.data.sequences}
        grid = tuple(config.data.grid)
        tumour = volume.seg > 0
        image, brain, label, affine = preprocess(images, volume.brain, grid, tumour, volume.affine)
        margin = healthy_slices.margin_slices(margin_mm, volume.affine)
        healthy = healthy_slices.healthy_grid_slices(tumour, volume.brain, grid[2], margin)
        out.append(AnomalyVolume(case.case_id, image, brain, label, affine, case.folder, healthy))
    return out


def _tumour_only(volumes: Sequence[AnomalyVolume]) -> list[AnomalyVolume]:
    """The volumes with tumour, every slice of them (tumour-free cases say nothing about detection)."""
    return [dataclasses.replace(v, slices=None) for v in volumes if v.label.any()]


def _healthy_parts(volumes: Sequence[AnomalyVolume]) -> list[AnomalyVolume]:
    """The volumes' healthy slices, as healthy volumes (those with none left out)."""
    return [v for v in volumes if v.slices is not None and len(v.slices)]


def _split_subjects(subjects: list, fractions: Sequence[float], seed: int) -> dict[str, list]:
    counts = case_splits.split_counts(len(subjects), [f / sum(fractions) for f in fractions])
    order = np.random.default_rng(seed).permutation(len(subjects))
    out, start = {}, 0
    for name, count in zip(brats.SPLITS, counts, strict=True):
        out[name] = sorted((subjects[i] for i in order[start : start + count]), key=lambda s: s.subject_id)
        start += count
    return out


def _cache_path(config, inputs: list[pathlib.Path]) -> pathlib.Path:
    stat = [(str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in inputs]
    d = config.data
    params = {
        "grid": list(d.grid),
        "sequences": list(d.sequences),
        "resample": d.get("resample", ""),
        "split": [list(d.split_fractions), list(d.tumour_split_fractions), d.split_seed],
        "healthy": [d.get("healthy_source", "ixi"), float(d.get("healthy_margin_mm", 0.0))],
        "folds": [int(d.get("folds", 0) or 0), int(d.get("fold", 0)), int(d.get("fold_val_cases", 0) or 0)],
        "v": CACHE_VERSION,
    }
    digest = hashlib.sha1(json.dumps([stat, params]).encode()).hexdigest()[:16]
    return sources.cache_dir(config) / "anomaly" / f"{digest}.npz"


def _save(path: pathlib.Path, splits: dict[str, list[AnomalyVolume]]) -> None:
    arrays = {}
    for name, volumes in splits.items():
        for i, v in enumerate(volumes):
            prefix = f"{name}/{i}/"
            arrays.update({prefix + "image": v.image, prefix + "brain": v.brain, prefix + "affine": v.affine})
            arrays[prefix + "meta"] = np.array(json.dumps([v.case_id, str(v.source)]))
            if v.label is not None:
                arrays[prefix + "label"] = v.label
            if v.slices is not None:
                arrays[prefix + "slices"] = v.slices
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: pathlib.Path) -> dict[str, list[AnomalyVolume]]:
    splits: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    with np.load(path) as data:
        for key in data.files:
            name, i, field = key.split("/")
            splits.setdefault(name, {}).setdefault(int(i), {})[field] = data[key]
    out = {}
    for name, items in splits.items():
        out[name] = []
        for i in sorted(items):
            f = items[i]
            case_id, source = json.loads(str(f["meta"]))
            out[name].append(
                AnomalyVolume(
                    case_id,
                    f["image"],
                    f["brain"],
                    f.get("label"),
                    f["affine"],
                    pathlib.Path(source),
                    f.get("slices"),
                )
            )
    return out


def load_anomaly_splits(
    config: ml_collections.ConfigDict, progress: bool = True
) -> dict[str, list[AnomalyVolume]]:
    """'train'/'val'/'test': healthy volumes; 'val_tumour'/'test_tumour': tumour cases, every slice.

    `data.healthy_source`: 'ixi' = healthy subjects (`data.healthy_root`, or phantom ones) split by subject,
    the BraTS-layout cases split into threshold and test cases (`data.tumour_split_fractions`); 'brats' = the
    labelled cases split by patient like the segmenters' (`data.folds` / `data.split_fractions`), their
    healthy slices the healthy splits (`healthy_slices`), plus the subjects of `data.healthy_root` in training
    when they have the sequences.
    """
    d = config.data
    source = d.get("healthy_source", "ixi")
    if source not in ("ixi", "brats"):
        raise ValueError(f"data.healthy_source={source!r}: expected 'ixi' or 'brats'")
    subjects = _healthy_subjects(config, progress) if source == "ixi" or d.healthy_root else []
    if source == "ixi":
        cases = sources.checked_cases(config, progress)
        tumour = case_splits.split_cases(cases, tuple(d.tumour_split_fractions), seed=d.split_seed)
        tumour["train"] = []  # no detector trains on tumour cases: they validate the threshold and test
    else:
        tumour = sources.load_splits(config, progress)
    inputs = [p for s in subjects for p in [*s.images.values(), s.mask] if p is not None]
    inputs += [p for name in brats.SPLITS for c in tumour[name] for p in c.files]
    cache = _cache_path(config, inputs)
    if cache.exists():
        loaded = _load(cache)
        return {k: loaded.get(k, []) for k in (*brats.SPLITS, "val_tumour", "test_tumour")}
    if source == "ixi":
        healthy = _split_subjects(subjects, tuple(d.split_fractions), d.split_seed)
        splits = {name: _healthy_volumes(config, healthy[name], progress) for name in brats.SPLITS}
        splits["val_tumour"] = _tumour_only(_tumour_volumes(config, tumour["val"], progress))
        splits["test_tumour"] = _tumour_only(_tumour_volumes(config, tumour["test"], progress))
    else:
        cases = {name: _tumour_volumes(config, tumour[name], progress) for name in brats.SPLITS}
        splits = {name: _healthy_parts(cases[name]) for name in brats.SPLITS}
        splits["train"] += _healthy_volumes(config, subjects, progress)
        splits["val_tumour"], splits["test_tumour"] = _tumour_only(cases["val"]), _tumour_only(cases["test"])
    _save(cache, splits)
    return splits


def external_test(
    config: ml_collections.ConfigDict, progress: bool = True
) -> tuple[list[AnomalyVolume], list[AnomalyVolume]]:
    """(tumour, healthy) test volumes of the labelled cases in `eval.data_root`: their tumours, and their
    healthy slices (with `data.healthy_source='brats'`; none otherwise)."""
    root = config.eval.data_root
    layout = config.eval.get("layout") or None
    cases = layouts.find_cases(root, layout=layout, available=sources.available(config))
    unlabelled = [c.case_id for c in cases if c.seg is None]
    if unlabelled:
        raise brats.DataError(
            f"{root}: {len(unlabelled)} case(s) without a reference segmentation (e.g. {unlabelled[0]}); "
            "the detectors are scored against it"
        )
    volumes = _tumour_volumes(config, cases, progress)
    healthy = _healthy_parts(volumes) if config.data.get("healthy_source", "ixi") == "brats" else []
    return _tumour_only(volumes), healthy


def _healthy_subjects(config: ml_collections.ConfigDict, progress: bool) -> list[ixi.SubjectFiles]:
    """The IXI-layout subjects of `data.healthy_root` (phantom ones when unset, with the 'ixi' source)."""
    d = config.data
    if d.healthy_root:
        healthy_root = pathlib.Path(d.healthy_root).expanduser()
    else:
        healthy_root = phantom_ixi.ensure_ixi_dataset(
            sources.cache_dir(config),
            d.healthy_subjects,
            d.phantom_seed,
            d.phantom_spacing_mm,
            progress,
            d.get("phantom_version", phantom_ixi.phantom.PHANTOM_VERSION),
        )
    absent = [s for s in d.sequences if s not in ixi.SEQUENCES]
    if absent:
        raise brats.DataError(
            f"{healthy_root}: IXI has no {', '.join(absent).upper()} (its sequences: "
            f"{', '.join(ixi.SEQUENCES).upper()}); with data.healthy_source='brats', leave data.healthy_root "
            "unset to train on the tumour cases' healthy slices only"
        )
    return ixi.find_subjects(healthy_root, tuple(d.sequences), d.mask_suffix)


def volumes_to_slices(
    volumes: Sequence[AnomalyVolume], min_brain_fraction: float = 0.05
) -> dict[str, np.ndarray]:
    """Axial slices with at least that fraction of brain: image, brain, label ([N,H,W,1]), case and z."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("image", "brain", "label", "case", "z")}
    for index, v in enumerate(volumes):
        keep = np.flatnonzero(v.brain.mean(axis=(1, 2)) >= min_brain_fraction)
        if v.slices is not None:
            keep = np.intersect1d(keep, v.slices)
        label = v.label if v.label is not None else np.zeros_like(v.brain)
        parts["image"].append(v.image[keep])
        parts["brain"].append(v.brain[keep][..., None].astype(np.float32))
        parts["label"].append(label[keep][..., None].astype(np.float32))
        parts["case"].append(np.full(len(keep), index, np.int32))
        parts["z"].append(keep.astype(np.int32))
    if not parts["image"] or not sum(len(p) for p in parts["image"]):
        raise brats.DataError("no slice has enough brain (data.min_brain_fraction too high, or no volumes)")
    return {k: np.concatenate(v) for k, v in parts.items()}
