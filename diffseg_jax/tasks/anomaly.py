"""Unsupervised anomaly detection: trained on healthy brains, scored by pDDPM's detection protocol.

Training examples are single-sequence slices of healthy subjects (unified mode stacks the T1 and the T2
slices as separate examples, so one network learns both); the "label" key carries the brain mask, which the
augmentation flips and rotates with the image. Validation reconstructs tumour slices of the validation
cases and scores the best pooled Dice over thresholds of |x - x_hat| in the eroded brain ('val/dice'): the
criterion the test threshold is chosen by, so the kept checkpoint is the one that detects best.

Evaluation (pDDPM's protocol, volume by volume, per sequence):
1. reconstruct every brain slice of each volume; anomaly map = |x - x_hat| (AnoDDPM: squared) in the eroded
   brain, 3D median filter;
2. threshold = the best Dice on the pooled validation voxels (tumour validation cases), then fixed;
3. tumour test cases: map >= threshold (the rule it was chosen by), components <= `anomaly.min_component`
   voxels dropped -> DSC, TPR, TNR (inside the brain) and the threshold-free AUPRC; healthy test subjects:
   SSIM (per slice, mean over brain slices) and PSNR (brain voxels) of the reconstructions.
Writes <workdir>/eval/metrics.json, per_case.csv, maps/<case>_<seq>_{anomaly,reconstruction,pred}.nii.gz
(on the preprocessed grid, with its affine) and overlays/<case>_<seq>.png.
"""

from __future__ import annotations

import functools
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from data_pipelines import anomaly_data
from data_pipelines.brats import DataError
from diffseg_jax import inference, metrics, outputs, parallel
from diffseg_jax.checkpoint import restore_params
from diffseg_jax.methods.registry import build_method
from diffseg_jax.tasks import anomaly_levels, anomaly_maps, case_records
from diffseg_jax.tasks.base import Arrays, Predict, Task, TrainingData, output_dir

KNOWN_SEQUENCES = ("t1", "t2", "flair")  # FLAIR: healthy slices of BraTS cases (IXI has none)
PREDICT_OUTPUTS = {
    "reconstruction": "[B, H, W, 1] the healthy-looking reconstruction x_hat, intensities in [0, 1]"
}


def sequences(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """`data.sequences` as a tuple ('t2' or 't1,t2' on the command line)."""
    raw = config.data.sequences
    names = tuple(s.strip().lower() for s in (raw.split(",") if isinstance(raw, str) else raw) if s.strip())
    unknown = [s for s in names if s not in KNOWN_SEQUENCES]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"data.sequences={raw!r}: expected distinct names from {', '.join(KNOWN_SEQUENCES)}, e.g. 't2'"
        )
    return names


def data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy whose data.sequences is a tuple (what `data_pipelines.anomaly_data` reads)."""
    fields = config.to_dict()
    fields["data"]["sequences"] = sequences(config)
    return ml_collections.ConfigDict(fields)


def single_sequence_examples(image: np.ndarray, brain: np.ndarray) -> dict[str, np.ndarray]:
    """[N, H, W, M] -> {"image": [M*N, H, W, 1], "label": brain [M*N, H, W, 1]} (sequence-major)."""
    m = image.shape[-1]
    stacked = np.concatenate([image[..., k : k + 1] for k in range(m)], axis=0)
    return {"image": stacked.astype(np.float32), "label": np.tile(brain, (m, 1, 1, 1)).astype(np.float32)}


def validation_subset(arrays: dict[str, np.ndarray], max_slices: int, seed: int) -> dict[str, np.ndarray]:
    """Up to max_slices slices, half with tumour (a seeded choice), so Dice has lesions to find."""
    tumour = np.flatnonzero(arrays["label"].reshape(len(arrays["label"]), -1).any(axis=1))
    other = np.setdiff1d(np.arange(len(arrays["label"])), tumour)
    rng = np.random.default_rng(seed)
    n_tumour = min(len(tumour), max(max_slices // 2, max_slices - len(other)))
    chosen = np.concatenate(
        [
            rng.choice(tumour, n_tumour, replace=False),
            rng.choice(other, min(len(other), max_slices - n_tumour), replace=False),
        ]
    )
    return {k: v[np.sort(chosen)] for k, v in arrays.items()}


def prepare_training(config: ml_collections.ConfigDict, progress: bool = True) -> TrainingData:
    """Healthy single-sequence training examples and tumour validation slices."""
    splits = anomaly_data.load_anomaly_splits(data_config(config), progress)
    fraction = config.data.min_brain_fraction
    train = anomaly_data.volumes_to_slices(splits["train"], fraction)
    val = anomaly_data.volumes_to_slices(splits["val_tumour"], fraction)
    val = validation_subset(val, config.train.val_max_slices, config.seed + 1)
    train = single_sequence_examples(train["image"], train["brain"])
    counts = {name: len(volumes) for name, volumes in splits.items()}
    return TrainingData(train, val, f"volumes per split: {counts}; train slices: {len(train['image'])}")


def example_batch(config: ml_collections.ConfigDict) -> Arrays:
    """One single-sequence slice of the preprocessing grid; the label holds its brain mask."""
    height, width = config.data.grid[:2]
    blank = np.zeros((1, height, width, 1), np.float32)
    return {"image": blank, "label": blank}


def validation_scores(predict: Predict, val: Arrays, config: ml_collections.ConfigDict) -> dict[str, float]:
    """{'val/dice_<seq>': best pooled Dice, 'val/dice': their mean, 'val/l1_<seq>': mean |x - x_hat|}."""
    scalars = {}
    brain, label = val["brain"][..., 0] > 0.5, val["label"][..., 0] > 0.5
    for k, name in enumerate(sequences(config)):
        images = val["image"][..., k : k + 1]
        recon = predict(images)["reconstruction"]
        maps = anomaly_maps.residual_maps(images[..., 0], recon[..., 0], brain, config)
        _, best = metrics.best_threshold(maps[brain], label[brain])
        scalars[f"val/dice_{name}"] = float(best)
        scalars[f"val/l1_{name}"] = float(np.abs(images - recon)[..., 0][brain].mean())
    scalars["val/dice"] = float(np.mean([v for k, v in scalars.items() if k.startswith("val/dice_")]))
    return scalars


def reconstruct_volume(predict, volume, k: int) -> np.ndarray:
    """x_hat [D, H, W] of sequence k; slices without (usable) brain are copied from the input."""
    image = volume.image[..., k]
    recon = image.copy()
    z = np.flatnonzero(anomaly_data.usable_brain(volume).any(axis=(1, 2)))
    if z.size:
        recon[z] = predict(image[z][..., None])[..., 0]
    return recon


def evaluate(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, progress: bool = True
) -> dict[str, Any]:
    """Threshold on the validation tumours, score the test tumours and healthy subjects, write outputs."""
    workdir = pathlib.Path(workdir)
    out_dir = output_dir(config, workdir)
    names = sequences(config)
    splits = anomaly_data.load_anomaly_splits(data_config(config), progress)
    mesh = parallel.make_mesh()
    method = build_method(config)
    params, step = restore_params(config, workdir, method, mesh, example_batch(config))
    key = jax.random.PRNGKey(config.seed + 1000)
    tumour, healthy = splits["test_tumour"], splits["test"]
    if config.eval.data_root:  # another folder's cases, scored with the threshold of the training data
        tumour, external_healthy = anomaly_data.external_test(data_config(config), progress)
        healthy = external_healthy or healthy
    for name, volumes in (("validation", splits["val_tumour"]), ("test", tumour), ("healthy test", healthy)):
        if not volumes:
            raise DataError(
                f"no {name} cases with the anomaly splits (data.split_fractions / tumour_split_fractions)"
            )
    if config.eval.max_cases:
        tumour, healthy = tumour[: config.eval.max_cases], healthy[: config.eval.max_cases]

    def reconstruct(predict_fn, draw_key, images: np.ndarray) -> np.ndarray:
        out = inference.predict_slices(
            predict_fn, params, images, draw_key, mesh, **inference.eval_batching(config)
        )
        return out["reconstruction"]

    predict = []  # one reconstruction per noise level and draw; their anomaly maps are averaged
    for level_config in anomaly_levels.level_configs(config):
        predict_fn = inference.make_predict_fn(build_method(level_config), mesh)
        for draw in range(int(config.anomaly.get("ensemble", 1))):
            predict.append(functools.partial(reconstruct, predict_fn, jax.random.fold_in(key, draw)))

    store = case_records.CaseRecords(out_dir, config, step)
    units: dict[str, Callable[[], case_records.Record]] = {}
    for k, name in enumerate(names):
        units[f"threshold_{name}"] = functools.partial(_threshold, predict, splits["val_tumour"], k, config)
        for index, volume in enumerate(tumour):
            work = functools.partial(_tumour_case, predict, volume, k, name, index, store, out_dir, config)
            units[f"{volume.case_id}_{name}_tumour"] = work
        for volume in healthy:
            units[f"{volume.case_id}_{name}_healthy"] = functools.partial(_healthy_case, predict, volume, k)
    computed = store.run(list(units), lambda _, unit: units[unit](), "anomaly maps", progress, unit="parts")
    records = dict(zip(units, computed, strict=True))

    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"method": config.method, "task": "anomaly", "checkpoint_step": step}
    summary["num_cases"] = {"val_tumour": len(splits["val_tumour"]), "test_tumour": len(tumour)}
    summary["num_cases"]["test_healthy"] = len(healthy)
    summary["sequences"], seconds = {}, []
    for name in names:
        per_case, per_healthy = [], []
        for kind, volumes, scores in (("tumour", tumour, per_case), ("healthy", healthy, per_healthy)):
            for volume in volumes:
                record = records[f"{volume.case_id}_{name}_{kind}"]
                scores.append(record["scores"])
                seconds += [record["seconds"]] if kind == "tumour" else []
                row = {"case_id": volume.case_id, "kind": kind, "sequence": name}
                rows.append({**row, **outputs.rounded(record["scores"])})
        summary["sequences"][name] = {
            **records[f"threshold_{name}"],
            **metrics.summarize(per_case),
            **metrics.summarize(per_healthy),
        }
        stats = summary["sequences"][name]
        logging.info("%s: DSC %.4f AUPRC %.4f", name, stats["dsc"]["mean"], stats["auprc"]["mean"])
    summary["seconds_per_case"] = float(np.mean(seconds)) if seconds else None
    outputs.write_csv(out_dir / "per_case.csv", rows)
    outputs.write_json(out_dir / "metrics.json", summary)
    return summary


def map_and_reconstruction(predict, volume, k: int, config) -> tuple[np.ndarray, np.ndarray]:
    """The mean anomaly map over the reconstructions of `predict` (a list: noise levels x draws, see
    `anomaly_levels`), and their mean reconstruction; one reconstruction gives its own map."""
    recons = [reconstruct_volume(p, volume, k) for p in predict]
    image, brain = volume.image[..., k], volume.brain
    amap = np.mean([anomaly_maps.volume_map(image, r, brain, config) for r in recons], axis=0)
    return amap, np.mean(recons, axis=0)


def _threshold(predict, volumes, k: int, config: ml_collections.ConfigDict) -> case_records.Record:
    """The anomaly-score threshold with the best Dice over the validation tumours' brain voxels."""
    val_scores, val_labels = [], []
    for volume in volumes:
        amap, _ = map_and_reconstruction(predict, volume, k, config)
        val_scores.append(amap[volume.brain])
        val_labels.append(volume.label[volume.brain])
    threshold, val_dice = metrics.best_threshold(np.concatenate(val_scores), np.concatenate(val_labels))
    return {"threshold": float(threshold), "val_dice": float(val_dice)}


def _tumour_case(predict, volume, k, name, index, store, out_dir, config) -> case_records.Record:
    threshold = store.finished(f"threshold_{name}")["threshold"]
    tic = time.perf_counter()
    amap, recon = map_and_reconstruction(predict, volume, k, config)
    seconds = time.perf_counter() - tic
    scores, pred = anomaly_maps.tumour_scores(amap, volume.label, volume.brain, threshold, config)
    _write_outputs(out_dir, config, volume, name, index, amap, recon, pred, k)
    return {"scores": {s: float(v) for s, v in scores.items()}, "seconds": seconds}


def _healthy_case(predict, volume, k: int) -> case_records.Record:
    recon = np.mean([reconstruct_volume(p, volume, k) for p in predict], axis=0)
    scores = anomaly_maps.healthy_scores(volume.image[..., k], recon, anomaly_data.usable_brain(volume))
    return {"scores": {s: float(v) for s, v in scores.items()}}


def _write_outputs(out_dir, config, volume, name, index, amap, recon, pred, k) -> None:
    if config.eval.write_predictions:
        stem = out_dir / "maps" / f"{volume.case_id}_{name}"
        for suffix, value, dtype in (("anomaly", amap, np.float32), ("reconstruction", recon, np.float32)) + (
            ("pred", pred, np.uint8),
        ):
            path = stem.with_name(f"{stem.name}_{suffix}.nii.gz")  # [D, H, W] -> the affine's [H, W, D]
            outputs.save_nifti_on_affine(anomaly_data.to_nifti_order(value), volume.affine, path, dtype)
    if index < config.eval.num_overlays:
        z = int(np.argmax(volume.label.sum(axis=(1, 2))))
        panels = [
            (volume.image[z, :, :, k], name, "gray"),
            (recon[z], "reconstruction", "gray"),
            (amap[z], "anomaly map", "magma"),
            (pred[z], "prediction", "viridis"),
            (volume.label[z], "reference", "viridis"),
        ]
        outputs.save_overlay(
            out_dir / "overlays" / f"{volume.case_id}_{name}.png", f"{volume.case_id} z={z}", panels
        )


def summary_lines(config: ml_collections.ConfigDict, summary: dict[str, Any]) -> list[str]:
    """Per sequence: DSC and AUPRC on the tumour test cases, SSIM and PSNR on the healthy ones."""
    return [
        f"{name}: DSC {stats['dsc']['mean']:.4f}  AUPRC {stats['auprc']['mean']:.4f}"
        f"  SSIM {stats['ssim']['mean']:.4f}  PSNR {stats['psnr']['mean']:.2f} dB"
        for name, stats in summary["sequences"].items()
    ]


TASK = Task(
    name="anomaly",
    predict_outputs=PREDICT_OUTPUTS,
    selection="val/dice",
    selection_mode="max",
    example_batch=example_batch,
    prepare_training=prepare_training,
    validation_scores=validation_scores,
    evaluate=evaluate,
    summary_lines=summary_lines,
)
