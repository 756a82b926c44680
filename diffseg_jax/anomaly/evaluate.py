"""The detection protocol shared by every anomaly detector (pDDPM's), volume by volume, per sequence.

1. reconstruct every brain slice of each volume; anomaly map = |x - x_hat| (AnoDDPM: squared) in the eroded
   brain, 3D median filter;
2. threshold = the best Dice on the pooled validation voxels (tumour validation cases), then fixed;
3. tumour test cases: map > threshold, components <= `anomaly.min_component` voxels dropped -> DSC, TPR,
   TNR (inside the brain) and the threshold-free AUPRC; healthy test subjects: SSIM (per slice, mean over
   brain slices) and PSNR (brain voxels) of the reconstructions.
Writes <workdir>/eval/metrics.json, per_case.csv, maps/<case>_<seq>_{anomaly,reconstruction,pred}.nii.gz
(on the preprocessed grid, with its affine) and overlays/<case>_<seq>.png.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import jax
import ml_collections
import nibabel as nib
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from data_pipelines.anomaly_data import to_nifti_order
from data_pipelines.brats import DataError
from diffseg_jax import inference, metrics, parallel
from diffseg_jax.anomaly import detection, task
from diffseg_jax.evaluate import _per_case_csv, _write_text_atomic, restore_params
from diffseg_jax.methods.registry import build_method


def reconstruct_volume(predict, volume, k: int) -> np.ndarray:
    """x_hat [D, H, W] of sequence k; slices without brain are copied from the input."""
    image = volume.image[..., k]
    recon = image.copy()
    z = np.flatnonzero(volume.brain.any(axis=(1, 2)))
    if z.size:
        recon[z] = predict(image[z][..., None])[..., 0]
    return recon


def volume_map(image: np.ndarray, recon: np.ndarray, brain: np.ndarray, config) -> np.ndarray:
    """Median-filtered anomaly map [D, H, W], zero outside the eroded brain."""
    a = config.anomaly
    residual = detection.anomaly_map(image, recon, brain, squared=a.squared_error, erosion_iterations=0)
    inside = detection.erode_mask(brain, a.erosion)
    return detection.median_filter_3d(residual, a.median_size) * inside


def healthy_scores(image: np.ndarray, recon: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    z = np.flatnonzero(brain.any(axis=(1, 2)))
    ssim = np.mean([detection.ssim(image[i], recon[i], data_range=1.0) for i in z])
    return {"ssim": float(ssim), "psnr": detection.psnr(image[brain], recon[brain], data_range=1.0)}


def tumour_scores(amap, label, brain, threshold: float, config) -> tuple[dict[str, float], np.ndarray]:
    pred = detection.remove_small_components(amap > threshold, config.anomaly.min_component)
    scores = detection.binary_scores(pred[brain], label[brain])
    scores["auprc"] = detection.auprc(amap[brain], label[brain])
    return scores, pred


def save_overlay(path: pathlib.Path, title: str, panels: list[tuple[np.ndarray, str, str]]) -> None:
    from matplotlib.figure import Figure  # no pyplot: a notebook's backend stays as it was

    fig = Figure(figsize=(2.2 * len(panels), 2.6))
    for ax, (image, name, cmap) in zip(fig.subplots(1, len(panels)), panels, strict=True):
        ax.imshow(np.rot90(image), cmap=cmap)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


def _save_volume(path: pathlib.Path, volume: np.ndarray, affine: np.ndarray, dtype) -> None:
    """[D, H, W] on the preprocessed grid -> NIfTI [H, W, D] with the grid's affine (opens over the scan)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(to_nifti_order(volume).astype(dtype), affine)
    image.header.set_xyzt_units("mm")
    tmp = path.with_name(f".tmp-{path.name}")  # same extension: nibabel picks the format by name
    nib.save(image, tmp)
    tmp.replace(path)


def evaluate(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, progress: bool = True
) -> dict[str, Any]:
    """Threshold on the validation tumours, score the test tumours and healthy subjects, write outputs."""
    from data_pipelines import anomaly_data

    workdir = pathlib.Path(workdir)
    out_dir = pathlib.Path(config.eval.output_dir) if config.eval.output_dir else workdir / "eval"
    names = task.sequences(config)
    splits = anomaly_data.load_anomaly_splits(task.data_config(config), progress)
    mesh = parallel.make_mesh()
    method = build_method(config)
    h, w = splits["train"][0].image.shape[1:3]
    blank = np.zeros((1, h, w, 1), np.float32)
    params, step = restore_params(config, workdir, method, mesh, {"image": blank, "label": blank})
    predict_fn = inference.make_predict_fn(method, mesh)
    key = jax.random.PRNGKey(config.seed + 1000)
    tumour, healthy = splits["test_tumour"], splits["test"]
    for name, volumes in (("validation", splits["val_tumour"]), ("test", tumour), ("healthy test", healthy)):
        if not volumes:
            raise DataError(
                f"no {name} cases with the anomaly splits (data.split_fractions / tumour_split_fractions)"
            )
    if config.eval.max_cases:
        tumour, healthy = tumour[: config.eval.max_cases], healthy[: config.eval.max_cases]

    def predict(images: np.ndarray) -> np.ndarray:
        out = inference.predict_slices(predict_fn, params, images, key, mesh, config.eval.batch_size)
        return out["reconstruction"]

    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"method": config.method, "task": "anomaly", "checkpoint_step": step}
    summary["num_cases"] = {"val_tumour": len(splits["val_tumour"]), "test_tumour": len(tumour)}
    summary["num_cases"]["test_healthy"] = len(healthy)
    summary["sequences"], seconds = {}, []
    for k, name in enumerate(names):
        val_scores, val_labels = [], []
        for volume in tqdm(splits["val_tumour"], desc=f"{name} threshold", disable=not progress):
            recon = reconstruct_volume(predict, volume, k)
            amap = volume_map(volume.image[..., k], recon, volume.brain, config)
            val_scores.append(amap[volume.brain])
            val_labels.append(volume.label[volume.brain])
        threshold, val_dice = detection.best_threshold(np.concatenate(val_scores), np.concatenate(val_labels))
        per_case = []
        for index, volume in enumerate(tqdm(tumour, desc=f"{name} tumour test", disable=not progress)):
            tic = time.perf_counter()
            recon = reconstruct_volume(predict, volume, k)
            seconds.append(time.perf_counter() - tic)
            amap = volume_map(volume.image[..., k], recon, volume.brain, config)
            scores, pred = tumour_scores(amap, volume.label, volume.brain, threshold, config)
            per_case.append(scores)
            rows.append({"case_id": volume.case_id, "kind": "tumour", "sequence": name, **_rounded(scores)})
            _write_outputs(out_dir, config, volume, name, index, amap, recon, pred, k)
        per_healthy = []
        for volume in tqdm(healthy, desc=f"{name} healthy test", disable=not progress):
            recon = reconstruct_volume(predict, volume, k)
            scores = healthy_scores(volume.image[..., k], recon, volume.brain)
            per_healthy.append(scores)
            rows.append({"case_id": volume.case_id, "kind": "healthy", "sequence": name, **_rounded(scores)})
        summary["sequences"][name] = {
            "threshold": threshold,
            "val_dice": val_dice,
            **metrics.summarize(per_case),
            **metrics.summarize(per_healthy),
        }
        stats = summary["sequences"][name]
        logging.info("%s: DSC %.4f AUPRC %.4f", name, stats["dsc"]["mean"], stats["auprc"]["mean"])
    summary["seconds_per_case"] = float(np.mean(seconds)) if seconds else None
    _write_text_atomic(out_dir / "per_case.csv", _per_case_csv(rows))
    _write_text_atomic(out_dir / "metrics.json", json.dumps(summary, indent=2))
    return summary


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {key: round(float(value), 6) for key, value in scores.items()}


def _write_outputs(out_dir, config, volume, name, index, amap, recon, pred, k) -> None:
    if config.eval.write_predictions:
        stem = out_dir / "maps" / f"{volume.case_id}_{name}"
        _save_volume(stem.with_name(stem.name + "_anomaly.nii.gz"), amap, volume.affine, np.float32)
        _save_volume(stem.with_name(stem.name + "_reconstruction.nii.gz"), recon, volume.affine, np.float32)
        _save_volume(stem.with_name(stem.name + "_pred.nii.gz"), pred, volume.affine, np.uint8)
    if index < config.eval.num_overlays:
        z = int(np.argmax(volume.label.sum(axis=(1, 2))))
        panels = [
            (volume.image[z, :, :, k], name, "gray"),
            (recon[z], "reconstruction", "gray"),
            (amap[z], "anomaly map", "magma"),
            (pred[z], "prediction", "viridis"),
            (volume.label[z], "reference", "viridis"),
        ]
        save_overlay(out_dir / "overlays" / f"{volume.case_id}_{name}.png", f"{volume.case_id} z={z}", panels)
