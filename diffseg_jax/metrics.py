"""Every score the project reports, exact, in numpy: overlap and distance of binary masks (Dice, IoU,
HD95, sensitivity, specificity), detection (best-Dice threshold, AUPRC), image similarity (PSNR, SSIM,
MAE) and the worth of an uncertainty map (QU-BraTS score, uncertainty-error overlap, calibration error).

Plain numpy + scipy.ndimage so evaluation never depends on JAX device state. The surface and
HD95 definitions follow the official BraTS evaluation (medpy): connectivity-1 surfaces and the
95th percentile of the *pooled* symmetric surface distances, so reported numbers are comparable
with published BraTS results.

Empty-mask conventions (documented here once, used everywhere):

* dice / iou: both empty -> 1.0 (perfect agreement), exactly one empty -> 0.0.
* sensitivity: reference empty -> 1.0 (there is nothing to miss).
* specificity: reference has no background -> 1.0 (there is nothing to falsely flag).
* hd95: both empty -> 0.0, exactly one empty -> the volume diagonal in mm (the worst possible
  distance), so a missed or hallucinated region is penalised instead of producing NaN/inf.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "auprc",
    "best_threshold",
    "calibration_bins",
    "dice",
    "expected_calibration_error",
    "hd95",
    "iou",
    "mae",
    "psnr",
    "qu_brats",
    "region_metrics",
    "sensitivity",
    "specificity",
    "ssim",
    "summarize",
    "uncertainty_error_overlap",
    "uncertainty_scores",
]


def _as_masks(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes/values and return boolean copies; catches e.g. probability maps early."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref must have the same shape, got {pred.shape} vs {ref.shape}")
    if pred.ndim < 1:
        raise ValueError("pred and ref must be at least 1-D arrays (2D slices or 3D volumes)")
    out = []
    for name, a in (("pred", pred), ("ref", ref)):
        if a.dtype != bool and not np.all((a == 0) | (a == 1)):
            raise ValueError(f"{name} must be boolean or contain only 0/1 values")
        out.append(a.astype(bool, copy=False))
    return out[0], out[1]


def _confusion(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int, int]:
    """Return (TP, FP, FN, TN) voxel counts."""
    p, r = _as_masks(pred, ref)
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(r)) - tp
    tn = p.size - tp - fp - fn
    return tp, fp, fn, tn


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice = 2|P∩R| / (|P|+|R|); the standard BraTS overlap score (1.0 if both empty)."""
    tp, fp, fn, _ = _confusion(pred, ref)
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2.0 * tp / denom


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """Jaccard index |P∩R| / |P∪R|; stricter than Dice on small regions (1.0 if both empty)."""
    tp, fp, fn, _ = _confusion(pred, ref)
    denom = tp + fp + fn
    return 1.0 if denom == 0 else tp / denom


def sensitivity(pred: np.ndarray, ref: np.ndarray) -> float:
    """Recall TP/(TP+FN): how much lesion is found; 1.0 when ref is empty (nothing to miss)."""
    tp, _, fn, _ = _confusion(pred, ref)
    return 1.0 if tp + fn == 0 else tp / (tp + fn)


def specificity(pred: np.ndarray, ref: np.ndarray) -> float:
    """TN/(TN+FP): how clean the background is; 1.0 when ref has no background voxels."""
    _, fp, _, tn = _confusion(pred, ref)
    return 1.0 if tn + fp == 0 else tn / (tn + fp)


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Normalise voxel spacing to one positive float per axis."""
    if spacing is None:
        return (1.0,) * ndim
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim:
        raise ValueError(f"spacing must have one entry per axis ({ndim}), got {len(sp)}")
    if any(not np.isfinite(s) or s <= 0 for s in sp):
        raise ValueError(f"spacing entries must be positive and finite, got {sp}")
    return sp


def _surface(mask: np.ndarray) -> np.ndarray:
    """Border voxels: mask XOR its connectivity-1 erosion (as medpy/BraTS; outside counts as bg)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=structure, iterations=1, border_value=0)


def _directed_distances(src: np.ndarray, dst: np.ndarray, sp: tuple[float, ...]) -> np.ndarray:
    """Distance (mm) from every surface voxel of src to the nearest surface voxel of dst."""
    dt = ndimage.distance_transform_edt(~_surface(dst), sampling=sp)
    return dt[_surface(src)]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance in mm, robust to a few outlier voxels.

    Distances from P's surface to R's surface and from R's to P's are pooled into one array and
    its 95th percentile (``np.percentile``, linear interpolation) is returned, exactly as medpy
    and the official BraTS evaluation do (MONAI instead takes the max of the two directed
    percentiles, which is slightly larger). Both empty -> 0.0; one empty -> volume diagonal.
    """
    p, r = _as_masks(pred, ref)
    sp = _spacing(spacing, p.ndim)
    p_any, r_any = bool(p.any()), bool(r.any())
    if not p_any and not r_any:
        return 0.0
    if not (p_any and r_any):
        return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape, sp, strict=True))))
    # Crop to the union's bounding box plus a 1-voxel margin (clipped to the image): erosion and
    # nearest-surface distances are unchanged, but EDT runs on far fewer voxels for big volumes.
    coords = np.nonzero(p | r)
    box = tuple(
        slice(max(int(c.min()) - 1, 0), min(int(c.max()) + 2, n))
        for c, n in zip(coords, p.shape, strict=True)
    )
    p, r = p[box], r[box]
    pooled = np.concatenate([_directed_distances(p, r, sp), _directed_distances(r, p, sp)])
    return float(np.percentile(pooled, 95))


def region_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None
) -> dict[str, float]:
    """All per-region metrics for one case, so callers report a consistent set."""
    return {
        "dice": dice(pred, ref),
        "iou": iou(pred, ref),
        "hd95": hd95(pred, ref, spacing),
        "sensitivity": sensitivity(pred, ref),
        "specificity": specificity(pred, ref),
    }


def summarize(per_case: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Aggregate per-case metrics into mean / population std / median per key, ignoring NaN.

    Keys missing from a case count as NaN; a key whose values are all NaN gets NaN stats.
    """
    keys: list[str] = []
    for case in per_case:
        keys.extend(k for k in case if k not in keys)
    out: dict[str, dict[str, float]] = {}
    for k in keys:
        vals = np.array([float(c.get(k, np.nan)) for c in per_case], dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column -> NaN, no noise
            out[k] = {
                "mean": float(np.nanmean(vals)),
                "std": float(np.nanstd(vals)),
                "median": float(np.nanmedian(vals)),
            }
    return out


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


def mae(x: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute error, in float64."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {x.shape} vs {y.shape}")
    return float(np.mean(np.abs(x - y)))


# Uncertainty scores: maps in [0, 100] (QU-BraTS's scale; 100 = most uncertain), inside the brain.

QU_BRATS_THRESHOLDS = np.linspace(100.0, 0.0, 41)  # the challenge's evaluation: 40 steps from 100 to 0
CALIBRATION_BINS = 10


def _counts_kept(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, how many of `values` are <= it (kept: not filtered as uncertain)."""
    return np.searchsorted(np.sort(values), thresholds, side="right")


def qu_brats(
    pred: np.ndarray,
    ref: np.ndarray,
    uncertainty: np.ndarray,
    brain: np.ndarray,
    thresholds: np.ndarray = QU_BRATS_THRESHOLDS,
) -> dict[str, float]:
    """The QU-BraTS score of one region (Mehta et al., MELBA 2022), as the challenge's evaluation computes it.

    At each threshold tau the voxels with uncertainty > tau are filtered out: Dice over the kept voxels of the
    whole volume (1.0 when none of them is in the prediction or the reference), and the ratios of filtered
    true positives and true negatives inside the brain. With AUCs over tau / 100, the score is
    (AUC_Dice + (1 - AUC_FTP) + (1 - AUC_FTN)) / 3: high when confident voxels are right and few right
    voxels are called uncertain.
    """
    pred, ref, brain = (np.asarray(a, bool) for a in (pred, ref, brain))
    u_all = np.asarray(uncertainty, np.float64)
    kept_all = {
        name: _counts_kept(u_all[mask], thresholds)
        for name, mask in (("tp", pred & ref), ("fp", pred & ~ref), ("fn", ~pred & ref))
    }
    denom = 2 * kept_all["tp"] + kept_all["fp"] + kept_all["fn"]
    dice_at = np.where(denom == 0, 1.0, 2 * kept_all["tp"] / np.maximum(denom, 1))
    u, p, r = u_all[brain], pred[brain], ref[brain]
    kept = {name: _counts_kept(u[mask], thresholds) for name, mask in (("tp", p & r), ("tn", ~p & ~r))}
    total_tp, total_tn = int((p & r).sum()), int((~p & ~r).sum())
    eps = np.finfo(np.float32).eps
    ftp = (total_tp - kept["tp"]) / (total_tp + eps)
    ftn = (total_tn - kept["tn"]) / (total_tn + eps)
    x = np.asarray(thresholds, np.float64) / 100.0
    order = np.argsort(x)

    def auc(y: np.ndarray) -> float:
        xs, ys = x[order], y[order]
        return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))

    dice_auc, ftp_auc, ftn_auc = auc(dice_at), auc(ftp), auc(ftn)
    return {
        "qu_score": (dice_auc + (1.0 - ftp_auc) + (1.0 - ftn_auc)) / 3.0,
        "qu_dice_auc": dice_auc,
        "qu_ftp_auc": ftp_auc,
        "qu_ftn_auc": ftn_auc,
    }


def uncertainty_error_overlap(
    pred: np.ndarray,
    ref: np.ndarray,
    uncertainty: np.ndarray,
    brain: np.ndarray,
    thresholds: np.ndarray = QU_BRATS_THRESHOLDS,
) -> float:
    """UEO (Jungo and Reyes, MICCAI 2019): the best Dice, over thresholds tau, between the voxels with
    uncertainty > tau and the voxels the prediction gets wrong (inside the brain). 1.0: the uncertainty
    marks exactly the errors; 0.0: it marks none. No error and nothing uncertain -> 1.0."""
    pred, ref, brain = (np.asarray(a, bool) for a in (pred, ref, brain))
    u = np.asarray(uncertainty, np.float64)[brain]
    error = pred[brain] != ref[brain]
    uncertain = u.size - _counts_kept(u, thresholds)
    both = int(error.sum()) - _counts_kept(u[error], thresholds)
    denom = int(error.sum()) + uncertain
    scores = np.where(denom == 0, 1.0, 2 * both / np.maximum(denom, 1))
    return float(scores.max())


def calibration_bins(prob: np.ndarray, ref: np.ndarray, brain: np.ndarray) -> dict[str, list[float]]:
    """Per probability bin (10 equal bins of [0, 1]) inside the brain: the voxel count, the sum of the
    predicted probabilities and the number of reference voxels; summable over cases."""
    p = np.asarray(prob, np.float64)[np.asarray(brain, bool)]
    y = np.asarray(ref, bool)[np.asarray(brain, bool)]
    index = np.minimum((p * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    return {
        "count": np.bincount(index, minlength=CALIBRATION_BINS).astype(float).tolist(),
        "sum_prob": np.bincount(index, weights=p, minlength=CALIBRATION_BINS).tolist(),
        "sum_ref": np.bincount(index, weights=y.astype(float), minlength=CALIBRATION_BINS).tolist(),
    }


def expected_calibration_error(bins: dict[str, list[float]]) -> float:
    """ECE of a region's voxel probabilities: sum over bins of (share of voxels) x |observed frequency of
    the region - mean predicted probability|. 0 = calibrated; 0.5 = e.g. certain of everything, half wrong."""
    count = np.asarray(bins["count"], np.float64)
    if count.sum() == 0:
        return float("nan")
    gap = np.abs(np.asarray(bins["sum_ref"]) - np.asarray(bins["sum_prob"]))  # = count x |freq - conf|
    return float(gap.sum() / count.sum())


def uncertainty_scores(
    prob: np.ndarray, pred: np.ndarray, ref: np.ndarray, uncertainty: np.ndarray, brain: np.ndarray
) -> dict[str, float]:
    """QU-BraTS score (and its AUCs), UEO and ECE of one region; `uncertainty` in [0, 100]."""
    return {
        **qu_brats(pred, ref, uncertainty, brain),
        "ueo": uncertainty_error_overlap(pred, ref, uncertainty, brain),
        "ece": expected_calibration_error(calibration_bins(prob, ref, brain)),
    }
