"""From reconstructions to anomaly scores and numbers: the pDDPM evaluation protocol, exact, in numpy.

Pipeline (pDDPM, also used for mDDPM / UMA-DDPM / AnoDDPM tables): anomaly map = |x - x_hat| (AnoDDPM:
squared) inside the eroded brain mask -> 3D median filter (k = 5) -> one threshold, the one with the best
Dice on the pooled validation voxels -> drop connected components of <= 7 voxels -> DSC, TPR, TNR, and
the threshold-free AUPRC. The brain mask is eroded because reconstructions err most on the skull-stripping
rim, which is not anomalous. Thresholds, AUPRC, SSIM and PSNR are in `diffseg_jax.metrics`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from diffseg_jax import metrics
from diffseg_jax.metrics import dice, sensitivity, specificity

__all__ = [
    "anomaly_map",
    "binary_scores",
    "erode_mask",
    "healthy_scores",
    "median_filter_3d",
    "remove_small_components",
    "residual_maps",
    "tumour_scores",
    "volume_map",
]


def erode_mask(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Binary erosion with the face-connected structure; outside the array counts as background."""
    mask = np.asarray(mask, dtype=bool)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if iterations == 0:
        return mask.copy()
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return ndimage.binary_erosion(mask, structure=structure, iterations=iterations, border_value=0)


def anomaly_map(
    x: np.ndarray,
    x_hat: np.ndarray,
    brain_mask: np.ndarray | None = None,
    squared: bool = False,
    erosion_iterations: int = 1,
) -> np.ndarray:
    """Residual |x - x_hat| (or its square) of one volume or slice, zero outside the eroded brain mask."""
    x, x_hat = np.asarray(x, dtype=np.float64), np.asarray(x_hat, dtype=np.float64)
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {x.shape} vs {x_hat.shape}")
    residual = (x - x_hat) ** 2 if squared else np.abs(x - x_hat)
    if brain_mask is None:
        return residual
    if np.shape(brain_mask) != x.shape:
        raise ValueError(f"brain_mask must have the image's shape {x.shape}, got {np.shape(brain_mask)}")
    return residual * erode_mask(brain_mask, erosion_iterations)


def median_filter_3d(volume: np.ndarray, size: int = 5) -> np.ndarray:
    """k x k x k median filter of one [H, W, D] volume: removes isolated high residuals (noise, edges)."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"expected one 3D volume, got shape {volume.shape}; filter each volume separately")
    return ndimage.median_filter(volume, size=size, mode="reflect")


def remove_small_components(mask: np.ndarray, max_size: int = 7, connectivity: int = 1) -> np.ndarray:
    """Drop connected components of at most max_size voxels (connectivity 1 = faces, ndim = all touching)."""
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    labels, _ = ndimage.label(mask, structure=structure)
    keep = np.bincount(labels.ravel()) > max_size
    keep[0] = False
    return keep[labels]


def binary_scores(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """DSC, TPR and TNR of a thresholded anomaly map (the names used in anomaly-detection tables)."""
    return {"dsc": dice(pred, labels), "tpr": sensitivity(pred, labels), "tnr": specificity(pred, labels)}


def volume_map(image: np.ndarray, recon: np.ndarray, brain: np.ndarray, config) -> np.ndarray:
    """Median-filtered anomaly map [D, H, W], zero outside the eroded brain."""
    a = config.anomaly
    residual = anomaly_map(image, recon, brain, squared=a.squared_error, erosion_iterations=0)
    inside = erode_mask(brain, a.erosion)
    return median_filter_3d(residual, a.median_size) * inside


def healthy_scores(image: np.ndarray, recon: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    z = np.flatnonzero(brain.any(axis=(1, 2)))
    ssim = np.mean([metrics.ssim(image[i], recon[i], data_range=1.0) for i in z])
    return {"ssim": float(ssim), "psnr": metrics.psnr(image[brain], recon[brain], data_range=1.0)}


def tumour_scores(amap, label, brain, threshold: float, config) -> tuple[dict[str, float], np.ndarray]:
    # `>=`: the rule `metrics.best_threshold` chose the threshold by
    pred = remove_small_components((amap >= threshold) & brain, config.anomaly.min_component)
    scores = binary_scores(pred[brain], label[brain])
    scores["auprc"] = metrics.auprc(amap[brain], label[brain])
    return scores, pred


def residual_maps(images: np.ndarray, recon: np.ndarray, brain: np.ndarray, config) -> np.ndarray:
    """Per-slice anomaly maps [N, H, W] in the eroded brain (2D erosion: slices are independent here)."""
    a = config.anomaly
    return np.stack(
        [
            anomaly_map(x, r, b, squared=a.squared_error, erosion_iterations=a.erosion)
            for x, r, b in zip(images, recon, brain, strict=True)
        ]
    )
