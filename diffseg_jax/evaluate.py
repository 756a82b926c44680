"""Volume-level evaluation: segment every slice of each case, reassemble, score, write NIfTI and PNGs."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from data_pipelines import brats, slices, sources
from diffseg_jax import inference, metrics, modalities, parallel
from diffseg_jax.checkpoint import Checkpoints
from diffseg_jax.methods.base import Method
from diffseg_jax.methods.registry import build_method
from diffseg_jax.missing.fill_in import FillIn, make_fill_in
from diffseg_jax.train import TrainState, create_train_state

REGIONS = ("wt", "tc", "et")
# (volume, config with the eval.available to use, key) -> segment_volume's output
Segmenter = Callable[[brats.CaseVolume, ml_collections.ConfigDict, jax.Array], dict[str, np.ndarray]]


def segment_volume(
    predict_fn: inference.PredictFn,
    params: Any,
    volume: brats.CaseVolume,
    config: ml_collections.ConfigDict,
    key: jax.Array,
    mesh,
    progress: bool = False,
    fill_in: FillIn | None = None,
) -> dict[str, np.ndarray]:
    """Probabilities and uncertainty [X, Y, Z, C] on the case's own grid (0 outside the brain).

    `fill_in`: the two-stage route; synthesises the zeroed sequences before segmenting.
    """
    images = np.asarray(volume.images, np.float32)
    mask = slices.brain_mask(images)
    z = np.flatnonzero(mask.any(axis=(0, 1)))
    if z.size == 0:
        raise brats.DataError(f"{volume.case_id}: every voxel of every sequence is zero")
    geom = slices.slice_geometry(mask, config.data.image_size)
    inputs = slices.to_slices(slices.normalize(images, mask), geom, z)
    if config.eval.get("available", ""):  # segment from a subset: the other sequences become zeros
        inputs = inputs * modalities.availability_vector(modalities.parse_available(config.eval.available))
    if fill_in is not None:
        inputs = fill_in(inputs, jax.random.fold_in(key, 1))
    out = inference.predict_slices(predict_fn, params, inputs, key, mesh, config.eval.batch_size, progress)
    return {
        name: slices.from_slices(out[name], geom, z) * mask[..., None] for name in ("prob", "uncertainty")
    }


def prediction_to_labels(prob: np.ndarray, convention: str, target: str) -> np.ndarray:
    """Thresholds at 0.5 and encodes in the case's label convention (WT-only: a 0/1 mask)."""
    regions = prob > 0.5
    if target == "wt":
        return regions[..., 0].astype(np.uint8)
    return brats.regions_to_labels(regions, convention)


def case_metrics(labels: np.ndarray, volume: brats.CaseVolume, target: str) -> dict[str, dict[str, float]]:
    """Per-region metrics of the written labels against the reference (regions as in DESIGN.md)."""
    ref = brats.labels_to_regions(volume.seg, volume.convention)
    if target == "wt":
        pred = (labels > 0)[..., None]
    else:
        pred = brats.labels_to_regions(labels, volume.convention)
    return {
        region: metrics.region_metrics(pred[..., i], ref[..., i], volume.spacing)
        for i, region in enumerate(REGIONS[: pred.shape[-1]])
    }


def save_overlay(
    path: pathlib.Path,
    volume: brats.CaseVolume,
    labels: np.ndarray,
    uncertainty: np.ndarray,
) -> None:
    """One PNG: the four sequences, reference, prediction and uncertainty at the most tumorous slice."""
    from matplotlib.figure import Figure  # no pyplot: a notebook's backend stays as it was

    area = (labels > 0).sum(axis=(0, 1))
    if volume.seg is not None:
        area = area + (volume.seg > 0).sum(axis=(0, 1))
    z = int(np.argmax(area)) if area.any() else volume.images.shape[2] // 2
    panels = [(volume.images[:, :, z, i], name, "gray") for i, name in enumerate(brats.MODALITIES)]
    if volume.seg is not None:
        panels.append((volume.seg[:, :, z], "reference", "viridis"))
    panels.append((labels[:, :, z], "prediction", "viridis"))
    panels.append((uncertainty[:, :, z], "uncertainty", "magma"))
    fig = Figure(figsize=(2.2 * len(panels), 2.6))
    axes = fig.subplots(1, len(panels))
    for ax, (image, title, cmap) in zip(axes, panels, strict=True):
        ax.imshow(np.rot90(image), cmap=cmap)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{volume.case_id}  z={z}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


def _write_text_atomic(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _per_case_csv(rows: list[dict[str, Any]]) -> str:
    import io

    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row)) or ["case_id"]  # union, first-seen order
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def restore_params(
    config: ml_collections.ConfigDict,
    workdir: pathlib.Path,
    method: Method,
    mesh,
    shape_source: dict[str, np.ndarray] | None = None,
) -> tuple[Any, int]:
    """EMA params of the configured checkpoint ('best' falls back to 'latest' if none was kept).

    `shape_source`: a one-example batch with the training batches' shapes (default: the segmentation one).
    """
    if shape_source is None:
        size, channels = config.data.image_size, 3 if config.data.target == "regions" else 1
        shape_source = {
            "image": np.zeros((1, size, size, 4), np.float32),
            "label": np.zeros((1, size, size, channels), np.float32),
        }
    target = jax.eval_shape(lambda: create_train_state(config, method, shape_source))
    target = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=parallel.replicated(mesh)),
        target,
    )
    folders = ["best", "checkpoints"] if config.eval.checkpoint == "best" else ["checkpoints"]
    for folder in folders:
        if not (workdir / folder).is_dir():
            continue
        manager = Checkpoints(workdir / folder, max_to_keep=None)
        step = manager.latest_step()
        if step is not None:
            state: TrainState = manager.restore(step, target)
            manager.close()
            return state.ema_params, step
        manager.close()
    raise FileNotFoundError(f"no checkpoint in {workdir} (run run_train.py with this --workdir first)")


def evaluate(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, progress: bool = True
) -> dict[str, Any]:
    """Segments the test split (or `eval.data_root`) and writes everything under <workdir>/eval/.

    `eval.available='each'` evaluates all 15 non-empty subsets of the sequences instead (`evaluate_subsets`).
    """
    workdir = pathlib.Path(workdir)
    out_dir = pathlib.Path(config.eval.output_dir) if config.eval.output_dir else workdir / "eval"
    each = config.eval.get("available", "") == "each"
    try:
        if not each:
            modalities.parse_available(config.eval.get("available", ""))
    except ValueError as err:
        raise brats.DataError(f"eval.{err}") from None
    mesh = parallel.make_mesh()
    try:
        fill_in = make_fill_in(config, mesh)
    except ValueError as err:
        raise brats.DataError(str(err)) from None
    method = build_method(config)
    params, step = restore_params(config, workdir, method, mesh)
    if config.eval.data_root:
        cases = brats.find_cases(config.eval.data_root, available=sources.available(config))
    else:
        cases = sources.load_splits(config, progress)[config.eval.split]
    if config.eval.max_cases:
        cases = cases[: config.eval.max_cases]
    predict_fn = inference.make_predict_fn(method, mesh)

    def segment(volume: brats.CaseVolume, sub_config: ml_collections.ConfigDict, key: jax.Array):
        return segment_volume(predict_fn, params, volume, sub_config, key, mesh, fill_in=fill_in)

    if each:
        return evaluate_subsets(config, cases, segment, step, out_dir, progress)
    return _evaluate_cases(config, cases, segment, step, out_dir, progress)


def _evaluate_cases(
    config: ml_collections.ConfigDict,
    cases: list[brats.CaseFiles],
    segment: Segmenter,
    step: int,
    out_dir: pathlib.Path,
    progress: bool,
) -> dict[str, Any]:
    """Segments and scores every case with `config.eval` as it is; writes metrics, CSV, NIfTI, PNGs."""
    key = jax.random.PRNGKey(config.seed + 1000)
    rows, per_region, seconds = [], {r: [] for r in REGIONS}, []
    for index, case in enumerate(tqdm(cases, desc="evaluating", disable=not progress)):
        volume = brats.load_case(case)
        tic = time.perf_counter()
        out = segment(volume, config, jax.random.fold_in(key, index))
        labels = prediction_to_labels(out["prob"], volume.convention, config.data.target)
        seconds.append(time.perf_counter() - tic)
        uncertainty = out["uncertainty"].max(axis=-1).astype(np.float32)
        if config.eval.write_predictions:
            pred_dir = out_dir / "predictions"
            brats.save_nifti(labels, volume, pred_dir / f"{case.case_id}_seg.nii.gz")
            brats.save_nifti(uncertainty, volume, pred_dir / f"{case.case_id}_uncertainty.nii.gz")
        if index < config.eval.num_overlays:
            save_overlay(out_dir / "overlays" / f"{case.case_id}.png", volume, labels, uncertainty)
        row: dict[str, Any] = {"case_id": case.case_id, "seconds": round(seconds[-1], 3)}
        if volume.seg is not None:
            for region, values in case_metrics(labels, volume, config.data.target).items():
                per_region[region].append(values)
                row.update({f"{region}_{k}": round(v, 6) for k, v in values.items()})
        rows.append(row)

    summary = {
        "method": config.method,
        "checkpoint_step": step,
        "available": config.eval.get("available", "") or ",".join(modalities.MODALITIES),
        "fill_in": config.eval.get("fill_in_workdir") or None,
        "num_cases": len(cases),
        "seconds_per_case": float(np.mean(seconds)) if seconds else None,
        "regions": {r: metrics.summarize(v) for r, v in per_region.items() if v},
    }
    _write_text_atomic(out_dir / "per_case.csv", _per_case_csv(rows))
    _write_text_atomic(out_dir / "metrics.json", json.dumps(summary, indent=2))
    for region, stats in summary["regions"].items():
        logging.info("%s dice %.4f  hd95 %.2f mm", region, stats["dice"]["mean"], stats["hd95"]["mean"])
    return summary


def evaluate_subsets(
    config: ml_collections.ConfigDict,
    cases: list[brats.CaseFiles],
    segment: Segmenter,
    step: int,
    out_dir: pathlib.Path,
    progress: bool,
) -> dict[str, Any]:
    """Every non-empty subset in turn: <out>/subsets/<t1+flair>/ (metrics, CSV) and <out>/subsets.json.

    A subset whose metrics.json exists for the same checkpoint is reused (an interrupted run resumes).
    Predictions and overlays are not written (15 x the cases); evaluate one subset for those.
    """
    results: dict[str, dict[str, float]] = {}
    for subset in modalities.all_subsets():
        name = ",".join(subset)
        sub_dir = out_dir / "subsets" / "+".join(subset)
        done = sub_dir / "metrics.json"
        summary = json.loads(done.read_text()) if done.exists() else None
        if summary is None or summary.get("checkpoint_step") != step:
            logging.info("subset %s", name)
            sub_config = ml_collections.ConfigDict(config.to_dict())
            sub_config.eval.available = name
            sub_config.eval.write_predictions = False
            sub_config.eval.num_overlays = 0
            summary = _evaluate_cases(sub_config, cases, segment, step, sub_dir, progress)
        results[name] = {r: stats["dice"]["mean"] for r, stats in summary["regions"].items()}
    regions = sorted({r for v in results.values() for r in v}, key=REGIONS.index)
    table = {
        "method": config.method,
        "checkpoint_step": step,
        "fill_in": config.eval.get("fill_in_workdir") or None,
        "num_cases": len(cases),
        "dice": results,
        "mean_over_subsets": {r: float(np.mean([v[r] for v in results.values()])) for r in regions},
    }
    _write_text_atomic(out_dir / "subsets.json", json.dumps(table, indent=2))
    return table
