"""From reconstructions to anomaly scores and numbers: the pDDPM evaluation protocol, exact, in numpy.

Pipeline (pDDPM, also used for mDDPM / UMA-DDPM / AnoDDPM tables): anomaly map = |x - x_hat| (AnoDDPM:
squared) inside the eroded brain mask -> 3D median filter (k = 5) -> one threshold, the one with the best
Dice on the pooled validation voxels -> drop connected components of <= 7 voxels -> DSC, TPR, TNR, and
the threshold-free AUPRC. The brain mask is eroded because reconstructions err most on the skull-stripping
rim, which is not anomalous. SSIM and PSNR score the reconstructions themselves (M2DN, UMA-DDPM).

Binary overlap scores come from `diffseg_jax.metrics` (same definitions and empty-mask conventions).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from diffseg_jax.metrics import dice, sensitivity, specificity

__all__ = [
    "anomaly_map",
    "auprc",
    "best_threshold",
    "binary_scores",
    "erode_mask",
    "median_filter_3d",
    "psnr",
    "remove_small_components",
    "ssim",
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


def _ranked(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Distinct thresholds (descending) with the TP and FP counts of predicting `scores >= threshold`.

    Equal scores form one group: a threshold cannot separate them, so counts are only read at the end of
    each group of ties.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same size, got {s.size} vs {y.size}")
    if y.dtype != bool and not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be boolean or contain only 0/1 values")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or Inf")
    y = y.astype(bool)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    group_end = np.append(s[1:] != s[:-1], True)
    tp = np.cumsum(y, dtype=np.int64)[group_end]
    fp = np.cumsum(~y, dtype=np.int64)[group_end]
    return s[group_end], tp, fp, int(y.sum())


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, Dice) maximising Dice of `scores >= threshold` over the pooled voxels, exactly.

    Every distinct score is tried (the optimum is always one of them). Among equal Dice the highest
    threshold wins. With no positive voxel the best is to predict nothing: (inf, 1.0).
    """
    thresholds, tp, fp, positives = _ranked(scores, labels)
    if positives == 0:
        return float("inf"), 1.0
    dsc = 2.0 * tp / (tp + fp + positives)
    best = int(np.argmax(dsc))
    return float(thresholds[best]), float(dsc[best])


def auprc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision, sum_n (R_n - R_{n-1}) P_n over distinct thresholds (as sklearn); NaN if no positive.

    No interpolation between operating points (the trapezoid over-estimates on PR curves).
    """
    _, tp, fp, positives = _ranked(scores, labels)
    if positives == 0:
        return float("nan")
    precision = tp / (tp + fp)
    recall = tp / positives
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def binary_scores(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """DSC, TPR and TNR of a thresholded anomaly map (the names used in anomaly-detection tables)."""
    return {"dsc": dice(pred, labels), "tpr": sensitivity(pred, labels), "tnr": specificity(pred, labels)}


def psnr(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """10 log10(data_range^2 / MSE) in dB; inf for identical images."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {x.shape} vs {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0.0 else float(10.0 * np.log10(data_range**2 / mse))


def ssim(
    x: np.ndarray,
    y: np.ndarray,
    data_range: float,
    sigma: float = 1.5,
    truncate: float = 3.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Mean SSIM of a 2D image or 3D volume with a Gaussian window (Wang et al. 2004).

    Equals skimage's `structural_similarity(x, y, data_range=..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)`: local statistics by a reflect-padded Gaussian filter (window
    2*int(truncate*sigma + 0.5) + 1 = 11), and the mean over the map with a half-window cropped from every
    border, so padded pixels do not count. Computed in float64.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {x.shape} vs {y.shape}")
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    pad = int(truncate * sigma + 0.5)
    if min(x.shape) < 2 * pad + 1:
        raise ValueError(f"every side must be >= the window ({2 * pad + 1}), got shape {x.shape}")

    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma, mode="reflect", truncate=truncate)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    inner = tuple(slice(pad, n - pad) for n in smap.shape)
    return float(smap[inner].mean())
