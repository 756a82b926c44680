"""Tumour segmentation: BraTS slices train, Dice picks the best checkpoint, volumes are evaluated.

Evaluation segments every brain slice of each case, reassembles the volume on the case's own grid, writes
the labels back in the case's convention (and the uncertainty) as NIfTI with its affine and header, scores
WT/TC/ET per case (Dice, IoU, HD95 in mm, sensitivity, specificity) and writes metrics.json, per_case.csv
and overlay PNGs. `eval.available` segments from a subset of the sequences ('each': all 15 subsets).
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from data_pipelines import brats, slices, sources
from diffseg_jax import inference, metrics, modalities, outputs, parallel
from diffseg_jax.checkpoint import restore_params
from diffseg_jax.methods.base import binary_entropy
from diffseg_jax.methods.registry import build_method
from diffseg_jax.tasks import case_records, tables
from diffseg_jax.tasks.base import Arrays, Predict, Task, TrainingData, output_dir
from diffseg_jax.tasks.fill_in import FillIn, make_fill_in

PREDICT_OUTPUTS = {
    "prob": "[B, H, W, C] probability of each region (WT, TC, ET; or WT only) in [0, 1]",
    "uncertainty": "[B, H, W, C] a per-pixel uncertainty (0 for deterministic methods without one)",
}

REGIONS = ("wt", "tc", "et")
QU_BRATS_NAMES = ("whole", "core", "enhance")  # <case>_unc_<name>.nii.gz: the QU-BraTS challenge's names
# (volume, the sequences to segment from, key) -> segment_volume's output
Segmenter = Callable[[brats.CaseVolume, tuple[str, ...], jax.Array], dict[str, np.ndarray]]


def case_slices(volume: brats.CaseVolume, image_size: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """(the slice geometry, the brain's axial indices, their normalised slices [N, S, S, 4])."""
    z = np.flatnonzero(volume.brain.any(axis=(0, 1)))
    if z.size == 0:
        raise brats.DataError(f"{volume.case_id}: no brain voxel (every sequence is background)")
    geom = slices.slice_geometry(volume.brain, image_size)
    return geom, z, slices.normalized_slices(volume.images, volume.brain, geom, z)


FLIPS = ((), (1,), (2,), (1, 2))  # the slice as is, flipped left-right, front-back, both


def predict_with_flips(
    predict_fn: inference.PredictFn,
    params: Any,
    inputs: np.ndarray,
    key: jax.Array,
    mesh,
    batching: dict[str, int],
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Test-time augmentation: the probability averaged over the slices and their flips (each flipped
    back), and as uncertainty the entropy (bits) of that mean."""
    probs = []
    for k, axes in enumerate(FLIPS):
        flipped = np.flip(inputs, axes) if axes else inputs
        out = inference.predict_slices(
            predict_fn,
            params,
            np.ascontiguousarray(flipped),
            jax.random.fold_in(key, k),
            mesh,
            progress=progress,
            **batching,
        )
        probs.append(np.flip(out["prob"], axes) if axes else out["prob"])
    prob = np.mean(probs, axis=0)
    return {"prob": prob, "uncertainty": np.asarray(binary_entropy(prob))}


def segment_volume(
    predict_fn: inference.PredictFn,
    params: Any,
    volume: brats.CaseVolume,
    config: ml_collections.ConfigDict,
    key: jax.Array,
    mesh,
    progress: bool = False,
    fill_in: FillIn | None = None,
    available: tuple[str, ...] = modalities.MODALITIES,
) -> dict[str, np.ndarray]:
    """Probabilities and uncertainty [X, Y, Z, C] on the case's own grid (0 outside the brain).

    `available`: the sequences to segment from (the others are zeroed); `fill_in`: the two-stage route,
    which synthesises the zeroed sequences before segmenting.
    """
    geom, z, inputs = case_slices(volume, config.data.image_size)
    mask = volume.brain
    if available != modalities.MODALITIES:  # segment from a subset: the other sequences become zeros
        inputs = inputs * modalities.availability_vector(available)
    if fill_in is not None:
        inputs = fill_in(inputs, jax.random.fold_in(key, 1))
    batching = inference.eval_batching(config)
    if config.eval.get("tta", ""):
        out = predict_with_flips(predict_fn, params, inputs, key, mesh, batching, progress)
    else:
        out = inference.predict_slices(predict_fn, params, inputs, key, mesh, progress=progress, **batching)
    channels = out["prob"].shape[-1]  # both maps back to the case's grid in one pass
    both = slices.from_slices(np.concatenate([out["prob"], out["uncertainty"]], axis=-1), geom, z)
    box = (slice(geom.x0, geom.x1), slice(geom.y0, geom.y1))  # outside it everything is 0 already
    both[box] *= mask[box][..., None]
    return {"prob": both[..., :channels], "uncertainty": both[..., channels:]}


def prediction_to_labels(prob: np.ndarray, convention: str, target: str) -> np.ndarray:
    """Thresholds at 0.5 and encodes in the case's label convention (WT-only: a 0/1 mask)."""
    regions = prob > 0.5
    if target == "wt":
        return regions[..., 0].astype(np.uint8)
    return brats.regions_to_labels(regions, convention)


def case_metrics(labels: np.ndarray, volume: brats.CaseVolume, target: str) -> dict[str, dict[str, float]]:
    """Per-region metrics of the written labels against the reference.

    WT = every tumour label, TC = necrotic core + enhancing, ET = enhancing (`brats.labels_to_regions`).
    """
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
    path: pathlib.Path, volume: brats.CaseVolume, labels: np.ndarray, uncertainty: np.ndarray, target: str
) -> None:
    """The four sequences, the reference and the prediction drawn over FLAIR, and the uncertainty, at the
    most tumorous axial slice."""
    area = (labels > 0).sum(axis=(0, 1))
    if volume.seg is not None:
        area = area + (volume.seg > 0).sum(axis=(0, 1))
    z = int(np.argmax(area)) if area.any() else volume.images.shape[2] // 2
    panels: list = [(volume.images[:, :, z, i], name, "gray") for i, name in enumerate(brats.MODALITIES)]
    flair = volume.images[:, :, z, brats.MODALITIES.index("flair")]
    if volume.seg is not None:
        reference = brats.labels_to_regions(volume.seg[:, :, z], volume.convention)
        panels.append(outputs.RegionOverlay(flair, reference, "reference"))
    if target == "wt":
        predicted = np.stack([labels[:, :, z] > 0] + [np.zeros_like(labels[:, :, z], bool)] * 2, axis=-1)
    else:
        predicted = brats.labels_to_regions(labels[:, :, z], volume.convention)
    panels.append(outputs.RegionOverlay(flair, predicted, "prediction"))
    panels.append((uncertainty[:, :, z], "uncertainty", "magma"))
    outputs.save_overlay(path, f"{volume.case_id}  z={z}", panels)


def evaluate(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, progress: bool = True
) -> dict[str, Any]:
    """Segments the test split (or `eval.data_root`) and writes everything under <workdir>/eval/.

    `eval.available='each'` evaluates all 15 non-empty subsets of the sequences instead (`evaluate_subsets`).
    """
    workdir = pathlib.Path(workdir)
    out_dir = output_dir(config, workdir)
    each = config.eval.get("available", "") == "each"
    try:  # parsed once, here; every case gets the tuple
        available = (
            modalities.MODALITIES if each else modalities.parse_available(config.eval.get("available", ""))
        )
    except ValueError as err:
        raise brats.DataError(f"eval.{err}") from None
    mesh = parallel.make_mesh()
    try:
        fill_in = make_fill_in(config, mesh)
    except ValueError as err:
        raise brats.DataError(str(err)) from None
    method = build_method(config)
    example = sources.example_slices(config)
    params, step = restore_params(config, workdir, method, mesh, example)
    cases = sources.evaluation_cases(config, progress)
    predict_fn = inference.make_predict_fn(method, mesh)
    compile_seconds = inference.warm_up(predict_fn, params, example["image"], mesh, config.eval.batch_size)

    def segment(volume: brats.CaseVolume, sequences: tuple[str, ...], key: jax.Array):
        return segment_volume(
            predict_fn, params, volume, config, key, mesh, fill_in=fill_in, available=sequences
        )

    if each:
        return evaluate_subsets(config, cases, segment, step, out_dir, progress)
    return _evaluate_cases(config, cases, segment, step, out_dir, progress, compile_seconds, available)


def _evaluate_cases(
    config: ml_collections.ConfigDict,
    cases: list[brats.CaseFiles],
    segment: Segmenter,
    step: int,
    out_dir: pathlib.Path,
    progress: bool,
    compile_seconds: float | None = None,
    available: tuple[str, ...] = modalities.MODALITIES,
) -> dict[str, Any]:
    """Segments and scores every case from the `available` sequences; writes metrics, CSV, NIfTI, PNGs.

    A case's seconds run from its loaded volume to its labels (slicing, sampling, back to the grid); the
    sampler was compiled before the first case (`compile_seconds` in the summary).

    Each finished case is recorded in <out>/cases/<case>.json (with a fingerprint of the checkpoint and the
    settings), so an evaluation stopped by SIGTERM/SIGINT (after the case it is on: `stop_signal.Stopped`) or
    killed resumes where it was, without redoing finished cases.
    """
    key = jax.random.PRNGKey(config.seed + 1000)

    def compute(index: int, name: str) -> case_records.Record:
        case_key = jax.random.fold_in(key, index)
        return _evaluate_case(config, cases[index], segment, case_key, index, out_dir, available)

    records = case_records.CaseRecords(out_dir, config, step).run(
        [case.case_id for case in cases], compute, "evaluating", progress
    )

    seconds = [r["row"]["seconds"] for r in records]
    per_region = {r: [rec["metrics"][r] for rec in records if r in rec["metrics"]] for r in REGIONS}
    summary = {
        "method": config.method,
        "checkpoint_step": step,
        "available": ",".join(available),
        "fill_in": config.eval.get("fill_in_workdir") or None,
        "num_cases": len(cases),
        "seconds_per_case": float(np.mean(seconds)) if seconds else None,
        "compile_seconds": round(compile_seconds, 2) if compile_seconds is not None else None,
        "regions": {r: metrics.summarize(v) for r, v in per_region.items() if v},
    }
    calibration = pooled_calibration(records)
    if calibration:
        summary["calibration"] = {
            region: {"ece": metrics.expected_calibration_error(bins), **bins}
            for region, bins in calibration.items()
        }
        outputs.save_reliability_diagram(out_dir / "reliability.png", calibration, config.method)
    outputs.write_csv(out_dir / "per_case.csv", [r["row"] for r in records])
    outputs.write_json(out_dir / "metrics.json", summary)
    for region, stats in summary["regions"].items():
        logging.info("%s dice %.4f  hd95 %.2f mm", region, stats["dice"]["mean"], stats["hd95"]["mean"])
    return summary


def pooled_calibration(records: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """The calibration bins of every case summed per region (the test split's reliability diagram)."""
    pooled: dict[str, dict[str, list[float]]] = {}
    for record in records:
        for region, bins in record.get("calibration", {}).items():
            into = pooled.setdefault(region, {key: [0.0] * len(values) for key, values in bins.items()})
            for key, values in bins.items():
                into[key] = [a + b for a, b in zip(into[key], values, strict=True)]
    return pooled


def _evaluate_case(
    config: ml_collections.ConfigDict,
    case: brats.CaseFiles,
    segment: Segmenter,
    key: jax.Array,
    index: int,
    out_dir: pathlib.Path,
    available: tuple[str, ...],
) -> dict[str, Any]:
    """One case: its prediction files and overlay, and {"row": the CSV row, "metrics": per region}."""
    volume = brats.load_case(case)
    tic = time.perf_counter()
    out = segment(volume, available, key)
    labels = prediction_to_labels(out["prob"], volume.convention, config.data.target)
    seconds = time.perf_counter() - tic
    uncertainty = out["uncertainty"].max(axis=-1).astype(np.float32)
    if config.eval.write_predictions:
        pred_dir = out_dir / "predictions"
        outputs.save_nifti(labels, volume, pred_dir / f"{case.case_id}_seg.nii.gz")
        outputs.save_nifti(uncertainty, volume, pred_dir / f"{case.case_id}_uncertainty.nii.gz")
        percent = submitted_uncertainty(out["uncertainty"])
        for i, name in enumerate(QU_BRATS_NAMES[: percent.shape[-1]]):  # the QU-BraTS submission's maps
            outputs.save_nifti(percent[..., i], volume, pred_dir / f"{case.case_id}_unc_{name}.nii.gz")
            if config.eval.save_probabilities:
                prob_path = pred_dir / f"{case.case_id}_prob_{name}.nii.gz"
                outputs.save_nifti(out["prob"][..., i], volume, prob_path, dtype=np.float32)
    if index < config.eval.num_overlays:
        overlay = out_dir / "overlays" / f"{case.case_id}.png"
        save_overlay(overlay, volume, labels, uncertainty, config.data.target)
    row: dict[str, Any] = {"case_id": case.case_id, "seconds": round(seconds, 3)}
    region_metrics: dict[str, dict[str, float]] = {}
    calibration: dict[str, dict[str, list[float]]] = {}
    if volume.seg is not None:
        scores = case_metrics(labels, volume, config.data.target)
        worth, calibration = uncertainty_metrics(out, labels, volume, config.data.target)
        region_metrics = {
            region: {name: float(v) for name, v in {**values, **worth[region]}.items()}
            for region, values in scores.items()
        }
        for region, values in region_metrics.items():
            row.update(outputs.rounded(values, prefix=f"{region}_"))
    return {"row": row, "metrics": region_metrics, "calibration": calibration}


def submitted_uncertainty(uncertainty: np.ndarray) -> np.ndarray:
    """Per-region uncertainty in [0, 1] -> whole percents 0-100 (uint8), as QU-BraTS takes them; the scores
    are computed from these, so the challenge's script on the written maps gives the project's figures."""
    return np.round(100.0 * np.clip(uncertainty, 0.0, 1.0)).astype(np.uint8)


def uncertainty_metrics(
    out: dict[str, np.ndarray], labels: np.ndarray, volume: brats.CaseVolume, target: str
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, list[float]]]]:
    """Per region: what the uncertainty map is worth (QU-BraTS score, UEO, ECE; `metrics.uncertainty_scores`
    with the map's [0, 1] scaled to QU-BraTS's [0, 100]) and the calibration bins (summed over cases)."""
    ref = brats.labels_to_regions(volume.seg, volume.convention)
    pred = (labels > 0)[..., None] if target == "wt" else brats.labels_to_regions(labels, volume.convention)
    scores, bins = {}, {}
    percent = submitted_uncertainty(out["uncertainty"])
    for i, region in enumerate(REGIONS[: pred.shape[-1]]):
        prob, unc = out["prob"][..., i], percent[..., i].astype(np.float32)
        scores[region] = metrics.uncertainty_scores(prob, pred[..., i], ref[..., i], unc, volume.brain)
        bins[region] = metrics.calibration_bins(prob, ref[..., i], volume.brain)
    return scores, bins


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
            summary = _evaluate_cases(sub_config, cases, segment, step, sub_dir, progress, None, subset)
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
    outputs.write_json(out_dir / "subsets.json", table)
    return table


def prepare_training(config: ml_collections.ConfigDict, progress: bool = True) -> TrainingData:
    train, val, description = sources.training_slices(config, progress)
    return TrainingData(train, val, description)


def slice_dice(prob: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Dice per channel pooled over all given slices (a cheap validation signal)."""
    pred = prob > 0.5
    ref = label > 0.5
    inter = np.sum(pred & ref, axis=(0, 1, 2))
    total = np.sum(pred, axis=(0, 1, 2)) + np.sum(ref, axis=(0, 1, 2))
    return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)


def validation_scores(predict: Predict, val: Arrays, config: ml_collections.ConfigDict) -> dict[str, float]:
    """Dice per channel pooled over the validation slices ('val/dice_<i>') and their mean ('val/dice')."""
    dice = slice_dice(predict(val["image"])["prob"], val["label"])
    scalars = {f"val/dice_{i}": float(v) for i, v in enumerate(dice)}
    scalars["val/dice"] = float(np.mean(dice))
    return scalars


def summary_lines(config: ml_collections.ConfigDict, summary: dict[str, Any]) -> list[str]:
    """Dice and HD95 per region; for `eval.available=each`, the markdown table of the 15 subsets."""
    if "mean_over_subsets" in summary:
        return tables.subsets_markdown({config.method: summary}).splitlines()
    return [
        f"{region}: dice {stats['dice']['mean']:.4f} ± {stats['dice']['std']:.4f}"
        f"  hd95 {stats['hd95']['mean']:.2f} mm"
        for region, stats in summary["regions"].items()
    ]


TASK = Task(
    name="segmentation",
    predict_outputs=PREDICT_OUTPUTS,
    selection="val/dice",
    selection_mode="max",
    example_batch=sources.example_slices,
    prepare_training=prepare_training,
    validation_scores=validation_scores,
    evaluate=evaluate,
    summary_lines=summary_lines,
)
