"""Hand-computed checks for diffseg_jax.metrics (exact values a wrong definition would miss)."""

import math

import numpy as np
import pytest
from scipy import ndimage

from diffseg_jax import metrics
from diffseg_jax.metrics import (
    _surface,
    dice,
    hd95,
    iou,
    region_metrics,
    sensitivity,
    specificity,
    summarize,
)


def row(n: int, *on: int) -> np.ndarray:
    """A (1, n) mask; with connectivity-1 erosion every foreground voxel is a surface voxel."""
    a = np.zeros((1, n), dtype=bool)
    a[0, list(on)] = True
    return a


# P = {0,1,2,3}, R = {1..6} in a row of 10: TP=3, FP=1, FN=3, TN=3.
P = row(10, 0, 1, 2, 3)
R = row(10, 1, 2, 3, 4, 5, 6)


def test_overlap_and_rates_hand_counts():
    assert dice(P, R) == pytest.approx(6 / 10)
    assert iou(P, R) == pytest.approx(3 / 7)
    assert sensitivity(P, R) == pytest.approx(3 / 6)
    assert specificity(P, R) == pytest.approx(3 / 4)
    # Not symmetric: swapping roles swaps FP/FN.
    assert sensitivity(R, P) == pytest.approx(3 / 4)
    assert specificity(R, P) == pytest.approx(3 / 6)


def test_int_01_inputs_match_bool():
    assert dice(P.astype(np.uint8), R.astype(np.int64)) == pytest.approx(0.6)


def test_empty_conventions():
    e, full = np.zeros((4, 5), bool), np.ones((4, 5), bool)
    one = e.copy()
    one[1, 2] = True
    assert dice(e, e) == 1.0 and iou(e, e) == 1.0
    assert dice(one, e) == 0.0 and dice(e, one) == 0.0
    assert iou(one, e) == 0.0 and iou(e, one) == 0.0
    assert sensitivity(one, e) == 1.0 and sensitivity(e, e) == 1.0  # nothing to miss
    assert sensitivity(e, one) == 0.0
    assert specificity(e, full) == 1.0 and specificity(one, full) == 1.0  # no negatives
    assert specificity(full, e) == 0.0
    assert hd95(e, e) == 0.0
    assert hd95(one, e) == pytest.approx(math.sqrt(4**2 + 5**2))
    assert hd95(e, one, spacing=(1.0, 2.0)) == pytest.approx(math.sqrt(4**2 + 10**2))


def test_hd95_pooled_not_max_of_directed_with_overlap():
    # P={0..4}, R={0}. P->R: [0,1,2,3,4]; R->P: [0].
    # Pooled sorted [0,0,1,2,3,4]: rank 0.95*5=4.75 -> 3 + 0.75*(4-3) = 3.75.
    # MONAI (max of directed p95): P->R rank 0.95*4=3.8 -> 3.8.
    pred, ref = row(12, 0, 1, 2, 3, 4), row(12, 0)
    assert hd95(pred, ref) == pytest.approx(3.75)
    assert hd95(pred, ref) != pytest.approx(3.8)
    assert hd95(ref, pred) == pytest.approx(3.75)  # symmetric


def test_hd95_pooled_disjoint():
    # P={0,1,2,3}, R={6}. P->R: [6,5,4,3]; R->P: [3].
    # Pooled sorted [3,3,4,5,6]: rank 0.95*4=3.8 -> 5 + 0.8 = 5.8 (MONAI: rank 2.85 of
    # [3,4,5,6] -> 5.85).
    pred, ref = row(10, 0, 1, 2, 3), row(10, 6)
    assert hd95(pred, ref) == pytest.approx(5.8)
    assert hd95(pred, ref) != pytest.approx(5.85)


def test_surface_uses_connectivity_one():
    # 3x3 block minus one corner: the centre keeps all 4 face neighbours, so with connectivity 1
    # (medpy/BraTS) it is interior; full connectivity would (wrongly here) call it surface.
    m = np.zeros((5, 5), bool)
    m[1:4, 1:4] = True
    m[1, 1] = False
    s = _surface(m)
    assert not s[2, 2]
    assert s.sum() == 7


def test_hd95_anisotropic_slabs_3d():
    # One-voxel-thick slabs 2 voxels apart along axis 0: every surface distance is 2*sx.
    p, r = np.zeros((8, 6, 7), bool), np.zeros((8, 6, 7), bool)
    p[2, 1:5, 1:6] = True
    r[4, 1:5, 1:6] = True
    assert hd95(p, r) == pytest.approx(2.0)
    assert hd95(p, r, spacing=(2.5, 1.0, 1.0)) == pytest.approx(5.0)
    assert hd95(p, r, spacing=(2.5, 0.3, 7.0)) == pytest.approx(5.0)  # other axes irrelevant


def test_hd95_shifted_cubes_3d():
    # 4^3 cubes shifted 2 voxels along axis 0: distances lie in [0, 2*sx]; the 16-voxel far face
    # of each cube sits exactly 2*sx away, i.e. 32 of 112 pooled values (>5%) -> p95 = 2*sx.
    p, r = np.zeros((12, 10, 10), bool), np.zeros((12, 10, 10), bool)
    p[2:6, 2:6, 2:6] = True
    r[4:8, 2:6, 2:6] = True
    assert hd95(p, r, spacing=(2.5, 1.0, 1.0)) == pytest.approx(5.0)
    assert hd95(p, r) == pytest.approx(2.0)
    assert hd95(p, p, spacing=(2.5, 1.0, 1.0)) == 0.0


def test_hd95_matches_brute_force_incl_border_and_crop():
    # Brute-force pairwise surface distances (no EDT, no cropping) on random 3D masks that also
    # touch the image border, with anisotropic spacing.
    rng = np.random.default_rng(0)
    sp = np.array([1.5, 0.7, 2.0])
    struct = ndimage.generate_binary_structure(3, 1)
    for _ in range(3):
        p = ndimage.binary_dilation(rng.random((9, 11, 8)) > 0.93, iterations=1)
        r = ndimage.binary_dilation(rng.random((9, 11, 8)) > 0.93, iterations=1)
        p[0, :3, :3] = True  # touches the border
        sp_pts = [np.argwhere(m ^ ndimage.binary_erosion(m, struct)) * sp for m in (p, r)]
        d = np.linalg.norm(sp_pts[0][:, None, :] - sp_pts[1][None, :, :], axis=-1)
        expected = np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95)
        assert hd95(p, r, spacing=tuple(sp)) == pytest.approx(expected)


def test_region_metrics_keys_and_values():
    m = region_metrics(P, R, spacing=(1.0, 1.0))
    assert set(m) == {"dice", "iou", "hd95", "sensitivity", "specificity"}
    assert m["dice"] == pytest.approx(0.6) and m["iou"] == pytest.approx(3 / 7)
    # P->R: [1,0,0,0]; R->P: [0,0,0,1,2,3]; pooled sorted [0*6,1,1,2,3]: rank 8.55 -> 2.55.
    assert m["hd95"] == pytest.approx(2.55)


@pytest.mark.parametrize(
    "fn", [dice, iou, sensitivity, specificity, hd95, region_metrics], ids=lambda f: f.__name__
)
def test_shape_mismatch_raises(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="0/1"):
        dice(np.full((3, 3), 0.4), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="spacing"):
        hd95(P, R, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        hd95(P, R, spacing=(1.0, 0.0))


def test_summarize_mean_std_median_ignores_nan():
    cases = [
        {"dice": 1.0, "hd95": 2.0},
        {"dice": 0.5, "hd95": float("nan")},
        {"dice": 0.0, "hd95": 4.0},
    ]
    s = summarize(cases)
    assert s["dice"]["mean"] == pytest.approx(0.5)
    assert s["dice"]["std"] == pytest.approx(math.sqrt(1 / 6))  # population std
    assert s["dice"]["median"] == pytest.approx(0.5)
    assert s["hd95"] == pytest.approx({"mean": 3.0, "std": 1.0, "median": 3.0})
    assert summarize([]) == {}
    assert math.isnan(summarize([{"x": float("nan")}])["x"]["mean"])


# Uncertainty scores against hand-computed cases. Eight brain voxels: TP at 0-2, an FN at 3, an FP at 4, TN
# at 5-7; outside the brain an FN (certain) and an FP (uncertain): QU-BraTS counts Dice over the whole volume
# (the challenge's evaluation), the filtered ratios, UEO and ECE inside the brain only.
UNC_REF = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0], bool)
UNC_PRED = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 1], bool)
UNC_BRAIN = np.array([1] * 8 + [0, 0], bool)
# Filtering at every threshold below 100 (40 of the 41 points), then the last trapezoid to 100.
KEPT_BELOW_100 = 0.975
DICE_ALL_KEPT = 6 / 10  # at tau = 100: TP 3, FN 2 (one outside), FP 2 (one outside)


def _unc(values: list[float]) -> np.ndarray:
    return np.array(values + [0.0, 100.0])


def _qu_brats_by_definition(pred, ref, unc, brain) -> dict[str, float]:
    """QU-BraTS written out from its definition, one threshold at a time (independent of metrics.py)."""
    taus = [100.0 - 2.5 * i for i in range(41)]
    dice, ftp, ftn = [], [], []
    for tau in taus:
        keep = unc <= tau
        tp, fp, fn = (pred & ref & keep).sum(), (pred & ~ref & keep).sum(), (~pred & ref & keep).sum()
        dice.append(1.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
        tp_b, tn_b = pred & ref & brain, ~pred & ~ref & brain
        ftp.append((tp_b & ~keep).sum() / max(tp_b.sum(), 1e-7))
        ftn.append((tn_b & ~keep).sum() / max(tn_b.sum(), 1e-7))
    x = np.array(taus[::-1]) / 100

    def area(y):
        y = np.array(y[::-1])
        return float(sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1)))

    d, t, n = area(dice), area(ftp), area(ftn)
    return {"qu_dice_auc": d, "qu_ftp_auc": t, "qu_ftn_auc": n, "qu_score": (d + 2 - t - n) / 3}


def test_a_perfect_uncertainty_map_scores_highest():
    perfect = _unc([0, 0, 0, 100, 100, 0, 0, 0])  # uncertain exactly where the prediction is wrong
    scores = metrics.qu_brats(UNC_PRED, UNC_REF, perfect, UNC_BRAIN)
    below = 6 / 7  # below 100 both FPs and the brain's FN are filtered: TP 3, the certain FN outside
    dice_auc = KEPT_BELOW_100 * below + 0.025 * (below + DICE_ALL_KEPT) / 2
    assert scores["qu_dice_auc"] == pytest.approx(dice_auc)
    assert scores["qu_ftp_auc"] == scores["qu_ftn_auc"] == 0.0
    assert scores["qu_score"] == pytest.approx((dice_auc + 2.0) / 3)
    assert metrics.uncertainty_error_overlap(UNC_PRED, UNC_REF, perfect, UNC_BRAIN) == 1.0


def test_a_useless_uncertainty_map_is_penalised_by_the_filtered_ratios():
    everything = _unc([100.0] * 8)  # all uncertain: every right voxel is filtered below 100
    scores = metrics.qu_brats(UNC_PRED, UNC_REF, everything, UNC_BRAIN)
    ratio_auc = KEPT_BELOW_100 * 1.0 + 0.025 * 0.5
    assert scores["qu_ftp_auc"] == pytest.approx(ratio_auc) and scores["qu_ftn_auc"] == pytest.approx(
        ratio_auc
    )
    dice_auc = 0.025 * (0.0 + DICE_ALL_KEPT) / 2  # below 100 only the certain FN outside is kept: Dice 0
    assert scores["qu_score"] == pytest.approx((dice_auc + 2 * (1 - ratio_auc)) / 3)
    assert metrics.uncertainty_error_overlap(UNC_PRED, UNC_REF, everything, UNC_BRAIN) == pytest.approx(0.4)
    nothing = _unc([0.0] * 8)  # overconfident: only the uncertain FP outside is ever filtered
    dice_auc = KEPT_BELOW_100 * (6 / 9) + 0.025 * (6 / 9 + DICE_ALL_KEPT) / 2
    assert metrics.qu_brats(UNC_PRED, UNC_REF, nothing, UNC_BRAIN)["qu_score"] == pytest.approx(
        (dice_auc + 2) / 3
    )
    assert metrics.uncertainty_error_overlap(UNC_PRED, UNC_REF, nothing, UNC_BRAIN) == 0.0
    perfect = metrics.qu_brats(UNC_PRED, UNC_REF, _unc([0, 0, 0, 100, 100, 0, 0, 0]), UNC_BRAIN)
    assert perfect["qu_score"] > (dice_auc + 2) / 3 > scores["qu_score"]


def test_qu_brats_equals_its_definition_on_random_volumes():
    rng = np.random.default_rng(7)
    for _ in range(5):
        shape = (9, 8, 7)
        brain = np.zeros(shape, bool)
        brain[1:8, 1:7, 1:6] = True
        ref = rng.random(shape) < 0.3
        pred = ref ^ (rng.random(shape) < 0.2)  # some errors, in and outside the brain
        unc = np.round(rng.random(shape) * 100 / 2.5) * 2.5  # ties with the thresholds on purpose
        unc[rng.random(shape) < 0.3] = rng.random() * 100
        got = metrics.qu_brats(pred, ref, unc, brain)
        want = _qu_brats_by_definition(pred, ref, unc, brain)
        assert got == pytest.approx(want, abs=1e-7)


def test_expected_calibration_error_by_hand():
    brain = np.ones(4, bool)

    def ece(prob: float, positives: int) -> float:
        ref = np.arange(4) < positives
        return metrics.expected_calibration_error(metrics.calibration_bins(np.full(4, prob), ref, brain))

    assert ece(0.25, 1) == pytest.approx(0.0)  # a quarter predicted, a quarter true
    assert ece(1.0, 2) == pytest.approx(0.5)  # certain of all four, half wrong
    assert ece(0.95, 4) == pytest.approx(0.05)
    probs, ref = np.array([0.05, 0.95, 0.5, 0.9]), np.array([0, 1, 1, 0], bool)
    bins = metrics.calibration_bins(probs, ref, np.array([1, 1, 1, 0], bool))  # the last is outside
    assert bins["count"][0] == bins["count"][9] == bins["count"][5] == 1.0 and sum(bins["count"]) == 3
