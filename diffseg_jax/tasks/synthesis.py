"""Synthesis of missing sequences (M2DN): BraTS slices train; PSNR picks the best checkpoint; test evaluation.

Evaluation, per test case and per each of the 14 availability patterns (non-empty proper subsets): cut the
normalised volume into slices as segmentation does (`segmentation.segment_volume`), zero the missing
sequences, synthesise them slice batch by slice batch, paste the slices back on the case's grid and score each
synthesised sequence against the real normalised one inside the brain: PSNR (data range = max - min of the
reference in the brain), SSIM (per axial slice on the brain's bounding box, mean over brain slices), MAE.
Baseline "mean of the available sequences" per pixel, built from the same slices and pasted back the same
way (fair: it pays the same resampling). `resampling_ceiling` scores the real sequence after that round
trip: the best any slice-based synthesis can reach on this grid.
Writes <workdir>/eval/metrics.json, per_case.csv and, for the first `eval.num_overlays` cases and the
single-missing patterns, synthesis/<case>_missing-<seq>_<seq>.nii.gz (z-scores on the case's grid).
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from data_pipelines import brats, slices, sources
from diffseg_jax import inference, metrics, outputs, parallel
from diffseg_jax.checkpoint import restore_params
from diffseg_jax.methods.registry import build_method
from diffseg_jax.modalities import MODALITIES, all_subsets, availability_vector
from diffseg_jax.tasks import case_records, segmentation
from diffseg_jax.tasks.base import Arrays, Predict, Task, output_dir

PREDICT_OUTPUTS = {
    "synthesis": "[B, H, W, 4] the input's sequences where available, the synthesised ones where missing",
}
PATTERNS: tuple[tuple[str, ...], ...] = tuple(s for s in all_subsets() if len(s) < len(MODALITIES))
_SSIM_WINDOW = 11  # metrics.ssim's Gaussian window: every side must be at least this


def pattern_name(available: tuple[str, ...]) -> str:
    """'t1,t2 -> t1ce,flair': what is given -> what is synthesised."""
    missing = [m for m in MODALITIES if m not in available]
    return f"{','.join(available)} -> {','.join(missing)}"


def mean_of_available(images: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Baseline synthesis: per pixel mean of the available channels, [N, H, W, M] x [M] -> [N, H, W, 1]."""
    weights = np.asarray(available, np.float32)
    return (np.tensordot(images, weights, axes=([-1], [0])) / weights.sum())[..., None]


def validation_scores(predict: Predict, val: Arrays, config: ml_collections.ConfigDict) -> dict[str, float]:
    """PSNR of each sequence synthesised from the other three ('val/psnr_<seq>'), pooled over the brain
    pixels of the validation slices, and their mean ('val/psnr', the best checkpoint's score)."""
    images = np.asarray(val["image"], np.float32)
    brain = np.any(images != 0, axis=-1)
    n = images.shape[0]
    inputs = [images * availability_vector(tuple(m for m in MODALITIES if m != drop)) for drop in MODALITIES]
    synth = np.asarray(predict(np.concatenate(inputs))["synthesis"])
    scalars = {}
    for k, name in enumerate(MODALITIES):
        ref = images[..., k][brain]
        out = synth[k * n : (k + 1) * n, ..., k][brain]
        scalars[f"val/psnr_{name}"] = metrics.psnr(out, ref, data_range=_data_range(ref))
    scalars["val/psnr"] = float(np.mean(list(scalars.values())))
    return scalars


def _data_range(values: np.ndarray) -> float:
    span = float(values.max() - values.min()) if values.size else 0.0
    return span if span > 0 else 1.0


def ssim_box(brain: np.ndarray) -> tuple[slice, slice]:
    """In-plane bounding box of the brain, widened (within the volume) to SSIM's window."""
    box = []
    for axis, other in ((0, 1), (1, 0)):
        idx = np.flatnonzero(brain.any(axis=(other, 2)))
        n = brain.shape[axis]
        lo, hi = (int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, n)
        width = max(hi - lo, min(_SSIM_WINDOW, n))
        lo = min(max(lo - (width - (hi - lo)) // 2, 0), n - width)
        box.append(slice(lo, lo + width))
    return box[0], box[1]


def sequence_scores(
    synth: np.ndarray, ref: np.ndarray, brain: np.ndarray, box: tuple[slice, slice]
) -> dict[str, float]:
    """PSNR, SSIM and MAE of one synthesised volume [X, Y, Z] against the reference, inside the brain."""
    values = ref[brain]
    data_range = _data_range(values)
    out = {
        "psnr": metrics.psnr(synth[brain], values, data_range),
        "ssim": float("nan"),
        "mae": metrics.mae(synth[brain], values),
    }
    a, b = synth[box], ref[box]
    if min(a.shape[:2]) >= _SSIM_WINDOW:
        zs = np.flatnonzero(brain.any(axis=(0, 1)))
        out["ssim"] = float(np.mean([metrics.ssim(a[..., z], b[..., z], data_range) for z in zs]))
    return out


def _summaries(results: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, Any]:
    """{"patterns": {pattern: {seq: stats}}, "per_sequence": {seq: stats over every pattern missing it}}."""
    patterns = {p: {seq: metrics.summarize(v) for seq, v in by_seq.items()} for p, by_seq in results.items()}
    pooled: dict[str, list[dict[str, float]]] = {}
    for by_seq in results.values():
        for seq, values in by_seq.items():
            pooled.setdefault(seq, []).extend(values)
    per_sequence = {seq: metrics.summarize(pooled[seq]) for seq in MODALITIES if seq in pooled}
    return {"patterns": patterns, "per_sequence": per_sequence}


def evaluate(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, progress: bool = True
) -> dict[str, Any]:
    """Synthesises every missing pattern of the test cases, scores it and the baseline, writes outputs."""
    workdir = pathlib.Path(workdir)
    out_dir = output_dir(config, workdir)
    mesh = parallel.make_mesh()
    method = build_method(config)
    params, step = restore_params(config, workdir, method, mesh, sources.example_slices(config))
    cases = sources.evaluation_cases(config, progress)
    predict_fn = inference.make_predict_fn(method, mesh)
    key = jax.random.PRNGKey(config.seed + 1000)

    def compute(index: int, _: str) -> case_records.Record:
        return _synthesise_case(cases[index], index, predict_fn, params, key, mesh, out_dir, config)

    records = case_records.CaseRecords(out_dir, config, step).run(
        [case.case_id for case in cases], compute, "synthesising", progress
    )
    names = [pattern_name(p) for p in PATTERNS]
    model: dict[str, dict[str, list]] = {n: {} for n in names}  # pattern -> seq -> per-case scores
    baseline: dict[str, dict[str, list]] = {n: {} for n in names}
    ceiling: dict[str, list[dict[str, float]]] = {m: [] for m in MODALITIES}
    rows: list[dict[str, Any]] = []
    seconds: list[float] = []
    for record in records:
        if record.get("skipped"):
            continue
        for seq, scores in record["ceiling"].items():
            ceiling[seq].append(scores)
        for scores_by, into in ((record["model"], model), (record["baseline"], baseline)):
            for name, by_seq in scores_by.items():
                for seq, scores in by_seq.items():
                    into[name].setdefault(seq, []).append(scores)
        rows += record["rows"]
        seconds.append(record["seconds"])
    if not seconds:
        raise brats.DataError("no case with all four sequences to evaluate synthesis on")

    summary: dict[str, Any] = {
        "method": config.method,
        "task": "synthesis",
        "checkpoint_step": step,
        "num_cases": len(seconds),
        "seconds_per_case": float(np.mean(seconds)),  # all 14 patterns (model and scoring)
        **_summaries(model),
        "baseline_mean": _summaries(baseline),
        "resampling_ceiling": {seq: metrics.summarize(v) for seq, v in ceiling.items()},
    }
    outputs.write_csv(out_dir / "per_case.csv", rows)
    outputs.write_json(out_dir / "metrics.json", summary)
    for seq, stats in summary["per_sequence"].items():
        logging.info("%s: PSNR %.2f dB  SSIM %.4f", seq, stats["psnr"]["mean"], stats["ssim"]["mean"])
    return summary


def _synthesise_case(case, index, predict_fn, params, key, mesh, out_dir, config) -> case_records.Record:
    """One case, all 14 patterns: scores of the model, the baseline and the resampling ceiling; CSV rows."""
    volume = brats.load_case(case)
    if not all(volume.available):
        logging.warning("%s: skipped, not every sequence exists to score against", case.case_id)
        return {"skipped": True}
    brain = volume.brain
    geom, z, inputs = segmentation.case_slices(volume, config.data.image_size)
    normed = slices.normalize(volume.images, brain)
    box = ssim_box(brain)

    def to_volume(s: np.ndarray) -> np.ndarray:
        return slices.from_slices(s, geom, z) * brain[..., None]

    roundtrip = to_volume(inputs)
    record: case_records.Record = {"model": {}, "baseline": {}, "rows": []}
    record["ceiling"] = {
        seq: sequence_scores(roundtrip[..., k], normed[..., k], brain, box)
        for k, seq in enumerate(MODALITIES)
    }
    tic = time.perf_counter()
    for p, available in enumerate(PATTERNS):
        name = pattern_name(available)
        vec = availability_vector(available)
        given = inputs * vec
        pattern_key = jax.random.fold_in(key, index * len(PATTERNS) + p)
        out = inference.predict_slices(
            predict_fn, params, given, pattern_key, mesh, **inference.eval_batching(config)
        )
        synth = to_volume(out["synthesis"])
        mean = to_volume(mean_of_available(given, vec))[..., 0]
        for k, seq in enumerate(MODALITIES):
            if vec[k]:
                continue
            ours = sequence_scores(synth[..., k], normed[..., k], brain, box)
            base = sequence_scores(mean, normed[..., k], brain, box)
            record["model"].setdefault(name, {})[seq] = ours
            record["baseline"].setdefault(name, {})[seq] = base
            row = {"case_id": case.case_id, "available": ",".join(available), "sequence": seq}
            record["rows"].append({**row, **outputs.rounded(ours), **outputs.rounded(base, prefix="mean_")})
            if config.eval.write_predictions and index < config.eval.num_overlays and len(available) == 3:
                path = out_dir / "synthesis" / f"{case.case_id}_missing-{seq}_{seq}.nii.gz"
                outputs.save_nifti(synth[..., k].astype(np.float32), volume, path)
    record["seconds"] = time.perf_counter() - tic
    return record


def summary_lines(config: ml_collections.ConfigDict, summary: dict[str, Any]) -> list[str]:
    """Per synthesised sequence: PSNR, SSIM and MAE, beside the mean-of-available baseline's PSNR."""
    lines = []
    for name, stats in summary["per_sequence"].items():
        base = summary["baseline_mean"]["per_sequence"][name]["psnr"]["mean"]
        lines.append(
            f"{name}: PSNR {stats['psnr']['mean']:.2f} dB  SSIM {stats['ssim']['mean']:.4f}"
            f"  MAE {stats['mae']['mean']:.4f}  (mean of available: PSNR {base:.2f} dB)"
        )
    return lines


TASK = Task(
    name="synthesis",
    predict_outputs=PREDICT_OUTPUTS,
    selection="val/psnr",
    selection_mode="max",
    example_batch=sources.example_slices,
    prepare_training=segmentation.prepare_training,  # the same slices; labels unused
    validation_scores=validation_scores,
    evaluate=evaluate,
    summary_lines=summary_lines,
)
