"""Dataset layouts beside the BraTS namings: the Medical Segmentation Decathlon, nnU-Net raw data, and any
folder-per-case layout described by a small JSON file.

* **MSD** (Task01_BrainTumour): ``dataset.json`` with ``modality`` and ``labels``; ``imagesTr/<case>.nii.gz``
  4D (one volume per sequence, in the ``modality`` order); ``labelsTr/<case>.nii.gz``.
* **nnU-Net v2 raw** (and v1): ``dataset.json`` with ``channel_names`` (v1: ``modality``) and ``labels``
  (name -> value, or region-based name -> [values]); ``imagesTr/<case>_<XXXX>.nii.gz`` one file per
  channel; ``labelsTr/<case>.nii.gz``.
* **custom**: a JSON file (``data.layout``) naming, for each case folder under the root, the file of
  each sequence (``{case}`` in a name stands for the folder's name, e.g. ``"{case}_flair_reg.nii.gz"``),
  the label file with its convention (or explicit WT/TC/ET label lists) and an optional
  brain mask; the case id is the folder's name. Example: ``configs/layouts/brats2013_two_sequences.json``.

:func:`find_cases` picks the layout (``layout`` file given; a ``dataset.json`` at the root; else the
BraTS namings) and returns the same :class:`~data_pipelines.brats.CaseFiles` for all of them.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from data_pipelines import brats, conventions
from data_pipelines.brats import MODALITIES, CaseFiles, DataError

_CUSTOM_KEYS = {"description", "sequences", "label", "convention", "regions", "brain_mask"}
sequence_name = brats.sequence_name


def _wanted(available: Sequence[str] | None) -> tuple[str, ...]:
    wanted = MODALITIES if available is None else tuple(available)
    if any(m not in MODALITIES for m in wanted) or not wanted or len(set(wanted)) != len(wanted):
        raise DataError(f"available={list(wanted)}: expected distinct names from {MODALITIES}")
    return wanted


def _check_offered(source: pathlib.Path, offered: Sequence[str], wanted: Sequence[str]) -> None:
    absent = [m for m in wanted if m not in offered]
    if absent:
        raise DataError(
            f"{source}: has no {', '.join(absent)} (it has {', '.join(offered)}); "
            f"set data.available to a subset of {','.join(offered)}"
        )


def _load_json(path: pathlib.Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object")
    return value


def _convention_of(source: pathlib.Path, spec: Mapping[str, Any]) -> conventions.Convention:
    try:
        if "regions" in spec:
            return conventions.from_regions(source.stem, spec["regions"])
        return conventions.resolve(spec.get("convention", "brats2021")).name
    except conventions.ConventionError as err:
        raise DataError(f"{source}: {err}") from None


# ----------------------------------------------------------------------------------------- custom


def _named(file_name: str, folder: pathlib.Path) -> str:
    """A layout's file name in one case folder: ``{case}`` stands for the folder's name (the case id)."""
    return file_name.replace("{case}", folder.name)


def find_custom_cases(
    root: pathlib.Path,
    layout: pathlib.Path,
    wanted: Sequence[str],
    require_seg: bool,
    problems: list[DataError] | None = None,
) -> list[CaseFiles]:
    """Case folders under ``root`` (or ``root`` itself) holding the files the layout file names."""
    spec = _load_json(layout)
    unknown = sorted(set(spec) - _CUSTOM_KEYS)
    if unknown:
        raise DataError(f"{layout}: unknown field(s) {unknown} (known: {sorted(_CUSTOM_KEYS)})")
    if not isinstance(spec.get("sequences"), dict) or not spec["sequences"]:
        raise DataError(f'{layout}: "sequences" must map sequence names to file names')
    files: dict[str, str] = {}
    for name, file_name in spec["sequences"].items():
        canonical = sequence_name(name)
        if canonical is None:
            raise DataError(f"{layout}: unknown sequence {name!r} (expected one of {MODALITIES})")
        files[canonical] = str(file_name)
    _check_offered(layout, list(files), wanted)
    convention = _convention_of(layout, spec)
    names = [files[m] for m in wanted] + [spec[k] for k in ("label", "brain_mask") if spec.get(k)]
    holds = lambda folder: any((folder / _named(n, folder)).is_file() for n in names)  # noqa: E731
    folders = [root] if holds(root) else [p for p in sorted(root.iterdir()) if p.is_dir() and holds(p)]
    if not folders:
        raise DataError(f"no case folder in {root} holds the files {layout.name} names ({', '.join(names)})")
    if require_seg and not spec.get("label"):
        raise DataError(f'{layout}: no "label" file named, but training needs labels')

    def case(folder: pathlib.Path) -> CaseFiles:
        images = {}
        for modality in wanted:
            path = folder / _named(files[modality], folder)
            if not path.is_file():
                raise DataError(f"{folder}: missing {modality} (expected {path.name})")
            images[modality] = path
        seg = folder / _named(spec["label"], folder) if spec.get("label") else None
        if seg is not None and not seg.is_file():
            if require_seg:
                raise DataError(f"{folder}: missing segmentation (expected {seg.name})")
            seg = None
        mask = folder / _named(spec["brain_mask"], folder) if spec.get("brain_mask") else None
        if mask is not None and not mask.is_file():
            raise DataError(f"{folder}: missing brain mask (expected {mask.name})")
        return CaseFiles(folder.name, folder, images, seg, "custom", convention, mask)

    return brats.gather([functools.partial(case, folder) for folder in folders], problems)


# ------------------------------------------------------------------------------- MSD and nnU-Net


def _channels(dataset_json: pathlib.Path, spec: Mapping[str, Any]) -> dict[str, int]:
    """sequence -> channel index from `channel_names` (nnU-Net v2) or `modality` (MSD, nnU-Net v1), for the
    channels that are one of the four sequences."""
    names = spec.get("channel_names") or spec.get("modality")
    if not isinstance(names, dict) or not names:
        raise DataError(f'{dataset_json}: needs "channel_names" or "modality" (channel index -> sequence)')
    out: dict[str, int] = {}
    for index, name in names.items():
        canonical = sequence_name(str(name))
        if canonical is not None:  # other channels (DWI, ADC, ...) are not read
            out[canonical] = int(index)
    return out


def _label_convention(dataset_json: pathlib.Path, spec: Mapping[str, Any]) -> conventions.LabelConvention:
    labels = spec.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DataError(f'{dataset_json}: needs "labels"')
    if all(re.fullmatch(r"\d+", str(k)) for k in labels):  # MSD / nnU-Net v1: value -> name
        labels = {str(name): int(value) for value, name in labels.items()}
    try:
        return conventions.from_label_names(dataset_json.parent.name, labels)
    except conventions.ConventionError as err:
        raise DataError(f"{dataset_json}: {err}") from None


def find_dataset_json_cases(
    root: pathlib.Path, wanted: Sequence[str], require_seg: bool, problems: list[DataError] | None = None
) -> list[CaseFiles]:
    """Cases of an MSD or nnU-Net raw dataset folder (`dataset.json`, `imagesTr/`, `labelsTr/`)."""
    dataset_json = root / "dataset.json"
    spec = _load_json(dataset_json)
    channels = _channels(dataset_json, spec)
    _check_offered(dataset_json, list(channels), wanted)
    convention = _label_convention(dataset_json, spec)
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: folder does not exist")
    ending = str(spec.get("file_ending", ".nii.gz"))
    entries = sorted(p.name for p in images_dir.iterdir() if p.name.endswith(ending) and p.name[0] != ".")
    per_channel = re.compile(rf"(.+)_(\d{{4}}){re.escape(ending)}")
    split = [m for name in entries if (m := per_channel.fullmatch(name))]
    if split and len(split) == len(entries):  # nnU-Net: <case>_<XXXX><ending>
        case_ids = sorted({m.group(1) for m in split})
        scheme = "nnunet"
    else:  # MSD: <case><ending>, 4D
        case_ids = [name[: -len(ending)] for name in entries]
        scheme = "msd"
    if not case_ids:
        raise DataError(f"{images_dir}: no images ending in {ending}")

    def case(case_id: str) -> CaseFiles:
        if scheme == "nnunet":
            images = {m: images_dir / f"{case_id}_{channels[m]:04d}{ending}" for m in wanted}
            index: dict[str, int] = {}
        else:
            images = {m: images_dir / f"{case_id}{ending}" for m in wanted}
            index = {m: channels[m] for m in wanted}
        for modality, path in images.items():
            if not path.is_file():
                raise DataError(f"{images_dir}: case {case_id} lacks {modality} (expected {path.name})")
        seg = labels_dir / f"{case_id}{ending}"
        if not seg.is_file():
            if require_seg:
                raise DataError(f"{labels_dir}: missing segmentation of {case_id} (expected {seg.name})")
            seg = None
        return CaseFiles(case_id, root, images, seg, scheme, convention, None, index)

    return brats.gather([functools.partial(case, case_id) for case_id in case_ids], problems)


# -------------------------------------------------------------------------------------- dispatch


def find_cases(
    root: str | os.PathLike[str],
    *,
    layout: str | os.PathLike[str] | None = None,
    available: Sequence[str] | None = None,
    require_seg: bool = False,
    problems: list[DataError] | None = None,
) -> list[CaseFiles]:
    """Cases under ``root`` in any supported layout, sorted by case id.

    ``layout``: a custom layout file; otherwise a ``dataset.json`` at the root means MSD or nnU-Net, and
    anything else is read as BraTS namings. ``available`` lists the sequences that must exist (default:
    all four); the others become zero channels. With a ``problems`` list, a case with a missing file is
    left out and its error appended there instead of raised.
    """
    wanted = _wanted(available)
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: {'not a folder' if root.exists() else 'folder does not exist'}")
    if layout:
        layout = pathlib.Path(layout).expanduser()
        if not layout.is_file():
            raise DataError(f"{layout}: layout file does not exist")
        cases = find_custom_cases(root, layout, wanted, require_seg, problems)
    elif (root / "dataset.json").is_file():
        cases = find_dataset_json_cases(root, wanted, require_seg, problems)
    else:
        return brats.find_cases(root, available=wanted, require_seg=require_seg, problems=problems)
    seen: set[str] = set()
    for case in cases:
        if case.case_id in seen:
            raise DataError(f"{case.folder}: case id {case.case_id} occurs twice")
        seen.add(case.case_id)
    return sorted(cases, key=lambda c: c.case_id)
