"""Building blocks of the anomaly detectors: simplex noise, masks, selective scan / Mamba, evaluation."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffseg_jax import metrics
from diffseg_jax.diffusion import masks as masking
from diffseg_jax.diffusion import simplex
from diffseg_jax.metrics import dice
from diffseg_jax.models import ssm
from diffseg_jax.tasks import anomaly_maps

# ---------------------------------------------------------------------------------------------- simplex


def _brute_force_simplex(perm: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Sum of every lattice vertex's wavelet within reach, no simplex selection at all.

    If simplex3d picked the wrong tetrahedron, or if wavelets reached past its four corners (radius too
    large: a discontinuous field), this sum would differ.
    """
    grads = np.asarray(simplex._GRADIENTS, dtype=np.float64)
    base = np.floor(pts + pts.sum(1, keepdims=True) / 3.0).astype(np.int64)
    total = np.zeros(len(pts))
    for off in itertools.product(range(-2, 3), repeat=3):
        v = base + np.array(off)
        d = pts - (v - v.sum(1, keepdims=True) / 6.0)
        h = perm[(v[:, 0] % 256 + perm[(v[:, 1] % 256 + perm[v[:, 2] % 256]) % 256]) % 256] % 12
        falloff = np.maximum(0.5 - (d * d).sum(1), 0.0)
        total += falloff**4 * (grads[h] * d).sum(1)
    return total * simplex._SCALE


def test_simplex3d_equals_sum_over_all_nearby_lattice_vertices():
    perm = np.asarray(jax.random.permutation(jax.random.key(0), 256)).astype(np.int64)
    pts = np.asarray(jax.random.uniform(jax.random.key(1), (400, 3), minval=-30.0, maxval=30.0), np.float64)
    got = simplex.simplex3d(
        jnp.asarray(perm, jnp.int32), *(jnp.asarray(pts[:, a], jnp.float32) for a in range(3))
    )
    want = _brute_force_simplex(perm, pts)
    assert np.abs(want).max() > 0.1  # not trivially zero
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


def test_simplex_noise_deterministic_and_independent_per_field():
    shape = (2, 32, 32, 2)
    a = simplex.simplex_noise(jax.random.key(3), shape, frequency=16.0)
    b = simplex.simplex_noise(jax.random.key(3), shape, frequency=16.0)
    c = simplex.simplex_noise(jax.random.key(4), shape, frequency=16.0)
    assert a.shape == shape and a.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.abs(a - c).mean()) > 0.3
    fields = np.asarray(a).transpose(0, 3, 1, 2).reshape(4, -1)
    corr = np.corrcoef(fields)
    assert np.abs(corr[np.triu_indices(4, 1)]).max() < 0.9  # no two (b, c) fields are copies
    inside = jax.jit(lambda k: simplex.simplex_noise(k, shape, frequency=16.0) * 2.0)(jax.random.key(3))
    np.testing.assert_allclose(np.asarray(inside), 2.0 * np.asarray(a), atol=1e-5)


def test_simplex_values_in_range_and_standardised():
    pts = jax.random.uniform(jax.random.key(5), (3, 100_000), minval=-200.0, maxval=200.0)
    raw = jax.jit(simplex.simplex3d)(jax.random.permutation(jax.random.key(6), 256).astype(jnp.int32), *pts)
    assert float(jnp.abs(raw).max()) <= 1.0
    assert abs(float(raw.std()) / simplex.RAW_STD - 1.0) < 0.02
    noise = np.asarray(simplex.simplex_noise(jax.random.key(7), (8, 64, 64, 2), frequency=8.0))
    assert np.abs(noise).max() <= simplex.simplex_bound(6, 0.8)
    assert abs(noise.mean()) < 0.1
    assert abs(noise.std() - 1.0) < 0.1


def _roughness(x: np.ndarray) -> float:
    """Mean squared difference of horizontal neighbours over twice the variance: 1 for white noise."""
    return float(np.mean(np.diff(x, axis=2) ** 2) / (2 * x.var()))


def test_simplex_is_smooth_and_octaves_add_detail():
    shape = (4, 64, 64, 1)
    one = np.asarray(simplex.simplex_noise(jax.random.key(8), shape, octaves=1, frequency=16.0))
    four = np.asarray(simplex.simplex_noise(jax.random.key(8), shape, octaves=4, frequency=16.0))
    white = np.asarray(jax.random.normal(jax.random.key(9), shape)) * one.std()
    assert _roughness(white) == pytest.approx(1.0, abs=0.05)
    assert _roughness(one) < 0.05 * _roughness(white)
    assert _roughness(four) > 3.0 * _roughness(one)  # finer octaves add high-frequency energy
    assert _roughness(four) < 0.5 * _roughness(white)


# ---------------------------------------------------------------------------------------------- masking


def test_frequency_filter_keeps_exactly_the_box():
    n = 32
    yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    inside = np.cos(2 * np.pi * 4 * xx / n)  # |k_x| = 4 = r: on the box edge, kept by low-pass
    outside = np.cos(2 * np.pi * (5 * yy + 2 * xx) / n)  # |k_y| = 5 = r + 1: just outside
    img = jnp.asarray(np.stack([inside + outside, 0.5 + inside], -1)[None], jnp.float32)
    low = np.asarray(masking.frequency_filter(img, 4, "low"))
    high = np.asarray(masking.frequency_filter(img, 4, "high"))
    np.testing.assert_allclose(low[0, ..., 0], inside, atol=1e-5)
    np.testing.assert_allclose(high[0, ..., 0], outside, atol=1e-5)
    np.testing.assert_allclose(low[0, ..., 1], 0.5 + inside, atol=1e-5)  # DC is low
    np.testing.assert_allclose(high[0, ..., 1], 0.0, atol=1e-5)


@pytest.mark.parametrize("h,w,r", [(16, 16, 3), (15, 20, 2), (8, 8, 10)])
def test_frequency_masks_partition_and_agree_across_grids(h, w, r):
    for grid in ("centered", "fft2", "rfft2"):
        low = np.asarray(masking.frequency_box_mask(h, w, r, "low", grid))
        high = np.asarray(masking.frequency_box_mask(h, w, r, "high", grid))
        assert np.all(low ^ high)
    fft_low = np.asarray(masking.frequency_box_mask(h, w, r, "low", "fft2"))
    assert fft_low.sum() == min(2 * r + 1, h) * min(2 * r + 1, w)
    np.testing.assert_array_equal(
        np.asarray(masking.frequency_box_mask(h, w, r, grid="rfft2")), fft_low[:, : w // 2 + 1]
    )
    np.testing.assert_array_equal(np.asarray(masking.frequency_box_mask(h, w, r)), np.fft.fftshift(fft_low))
    assert np.fft.fftshift(fft_low)[h // 2, w // 2]  # DC is the centre of the shifted grid


def test_frequency_filter_per_example_half_width():
    img = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    both = masking.frequency_filter(img, jnp.array([2, 6]), "low")
    np.testing.assert_allclose(both[:1], masking.frequency_filter(img[:1], 2, "low"), atol=1e-5)
    np.testing.assert_allclose(both[1:], masking.frequency_filter(img[1:], 6, "low"), atol=1e-5)
    total = both + masking.frequency_filter(img, jnp.array([2, 6]), "high")
    np.testing.assert_allclose(total, img, atol=1e-5)


def test_pddpm_patch_grid_96px():
    grid = masking.patch_grid(96, 96, 48, 48)
    np.testing.assert_array_equal(grid, [[0, 0], [0, 48], [48, 0], [48, 48]])
    masks = masking.patch_masks(96, 96, 48, 48)
    assert masks.shape == (4, 96, 96)
    np.testing.assert_array_equal(masks.sum(0), 1)  # a partition: every pixel in exactly one patch
    assert np.all(masks.sum((1, 2)) == 48 * 48)


@pytest.mark.parametrize("h,w,patch,stride", [(100, 80, 32, 24), (50, 64, 16, 16), (64, 64, 64, 8)])
def test_patch_grid_covers_any_size(h, w, patch, stride):
    grid = masking.patch_grid(h, w, patch, stride)
    masks = masking.patch_masks(h, w, patch, stride)
    assert np.all(masks.sum(0) >= 1)
    assert np.all(grid >= 0) and np.all(grid[:, 0] + patch <= h) and np.all(grid[:, 1] + patch <= w)
    assert grid[:, 0].max() == h - patch and grid[:, 1].max() == w - patch
    assert np.all(np.diff(np.unique(grid[:, 0])) <= stride)
    with pytest.raises(ValueError):
        masking.patch_grid(h, w, max(h, w) + 1, stride)


def test_random_patch_mask_is_one_grid_patch():
    m = np.asarray(masking.random_patch_mask(jax.random.key(1), 16, 96, 96, 48, 48))
    assert m.shape == (16, 96, 96, 1)
    patches = masking.patch_masks(96, 96, 48, 48)
    chosen = [int(np.flatnonzero((patches == m[b, ..., 0]).all((1, 2)))[0]) for b in range(16)]
    assert len(set(chosen)) > 1
    np.testing.assert_array_equal(m, np.asarray(masking.random_patch_mask(jax.random.key(1), 16, 96, 96)))


def test_random_boxes_are_rectangles_within_size():
    m = np.asarray(masking.random_boxes(jax.random.key(2), 32, 40, 30, 5, 12))[..., 0]
    for box in m:
        rows, cols = np.flatnonzero(box.any(1)), np.flatnonzero(box.any(0))
        assert 5 <= len(rows) <= 12 and 5 <= len(cols) <= 12
        assert box.sum() == len(rows) * len(cols)  # filled rectangle
        assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)


def test_random_patch_dropout_masks_exact_cell_count():
    m = np.asarray(masking.random_patch_dropout(jax.random.key(3), 8, 32, 32, 8, 0.25))
    np.testing.assert_array_equal(m.sum((1, 2, 3)), 4 * 64)  # 16 cells, 4 hidden, 64 px each
    cells = m[:, ::8, ::8, 0]
    np.testing.assert_array_equal(np.repeat(np.repeat(cells, 8, 1), 8, 2), m[..., 0])
    assert len({c.tobytes() for c in cells}) > 1


def test_mddpm_box_shows_filtered_image_only_inside():
    img = jax.random.uniform(jax.random.key(4), (6, 32, 32, 2))
    out = masking.mddpm_box_corruption(jax.random.key(5), img)
    r, low_flags = np.asarray(out.half_width), np.asarray(out.kept_low)
    assert np.all((r >= 2) & (r <= 10)) and 0 < low_flags.sum() < 6
    mask = np.asarray(out.mask)
    assert mask.any(axis=(1, 2, 3)).all()
    np.testing.assert_array_equal(np.asarray(out.image)[~mask[..., 0]], np.asarray(img)[~mask[..., 0]])
    r_arr = jnp.asarray(r)
    want = np.where(
        low_flags[:, None, None, None],
        np.asarray(masking.frequency_filter(img, r_arr, "low")),
        np.asarray(masking.frequency_filter(img, r_arr, "high")),
    )
    np.testing.assert_allclose(np.asarray(out.image)[mask[..., 0]], want[mask[..., 0]], atol=1e-5)


def test_uma_masking_high_pass_with_hidden_patches():
    img = jax.random.uniform(jax.random.key(6), (3, 32, 32, 1)) + 5.0
    for spatial in ("patch", "box"):
        out = masking.uma_masking(jax.random.key(7), img, half_width=3, spatial=spatial)
        np.testing.assert_allclose(out.high_pass, masking.frequency_filter(img, 3, "high"), atol=1e-6)
        np.testing.assert_allclose(np.asarray(out.high_pass).mean((1, 2)), 0.0, atol=1e-4)  # DC removed
        hidden = np.asarray(out.spatial_mask)
        assert hidden.any() and not hidden.all()
        np.testing.assert_array_equal(np.asarray(out.image)[hidden[..., 0]], 0.0)
        np.testing.assert_array_equal(
            np.asarray(out.image)[~hidden[..., 0]], np.asarray(out.high_pass)[~hidden[..., 0]]
        )


# ---------------------------------------------------------------------------------------------- SSM


def _scan_inputs(key, batch, length, channels, state):
    ks = jax.random.split(key, 6)
    u = jax.random.normal(ks[0], (batch, length, channels))
    delta = jax.nn.softplus(jax.random.normal(ks[1], (batch, length, channels)))
    a = -jnp.exp(jax.random.normal(ks[2], (channels, state)))
    b = jax.random.normal(ks[3], (batch, length, state))
    c = jax.random.normal(ks[4], (batch, length, state))
    d = jax.random.normal(ks[5], (channels,))
    return u, delta, a, b, c, d


def test_selective_scan_reference_by_hand():
    # One channel, one state: delta = 1, A = log 0.5 -> decay 0.5; B = C = 1, D = 2; u = [1, 0, 3].
    # h = [1, 0.5, 0.25 + 3 = 3.25]; y = h + 2u = [3, 0.5, 9.25].
    u = jnp.array([1.0, 0.0, 3.0]).reshape(1, 3, 1)
    args = (
        u,
        jnp.ones_like(u),
        jnp.log(jnp.full((1, 1), 0.5)),
        jnp.ones((1, 3, 1)),
        jnp.ones((1, 3, 1)),
        jnp.array([2.0]),
    )
    for fn in (ssm.selective_scan_reference, ssm.selective_scan):
        np.testing.assert_allclose(np.asarray(fn(*args))[0, :, 0], [3.0, 0.5, 9.25], rtol=1e-6)


@pytest.mark.parametrize(
    "batch,length,channels,state", [(1, 1, 1, 1), (2, 7, 3, 4), (3, 33, 8, 16), (1, 64, 4, 2)]
)
def test_associative_scan_equals_sequential(batch, length, channels, state):
    args = _scan_inputs(jax.random.key(length), batch, length, channels, state)
    fast = jax.jit(ssm.selective_scan)(*args)
    slow = ssm.selective_scan_reference(*args)
    assert fast.shape == (batch, length, channels)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(slow), atol=1e-5, rtol=1e-5)


def test_mamba_block_jit_shapes_gradients_and_causality():
    block = ssm.MambaBlock(d_model=8, d_state=4)
    x = jax.random.normal(jax.random.key(0), (2, 16, 8))
    params = jax.jit(block.init)(jax.random.key(1), x)
    apply = jax.jit(block.apply)
    y = apply(params, x)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))

    grads = jax.jit(jax.grad(lambda p: jnp.mean(block.apply(p, x) ** 2)))(params)
    flat = jax.tree_util.tree_leaves_with_path(grads)
    names = {jax.tree_util.keystr(path) for path, _ in flat}
    assert (
        any("A_log" in n for n in names)
        and any("conv1d" in n for n in names)
        and any("dt_proj" in n for n in names)
    )
    for path, g in flat:
        assert float(jnp.abs(g).max()) > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"

    x2 = x.at[:, 10].add(1.0)  # change token 10: earlier outputs must not move (conv and scan are causal)
    y2 = apply(params, x2)
    np.testing.assert_allclose(np.asarray(y2[:, :10]), np.asarray(y[:, :10]), atol=1e-6)
    assert float(jnp.abs(y2[:, 10:] - y[:, 10:]).max()) > 1e-4


# ---------------------------------------------------------------------------------------------- detection


def test_best_threshold_toy_and_ties():
    # >= 0.8: TP1 FP0 -> 2/3; >= 0.4: TP1 FP1 -> 1/2; >= 0.35: TP2 FP1 -> 4/5; >= 0.1: TP2 FP2 -> 2/3.
    thr, dsc = metrics.best_threshold(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert thr == 0.35 and dsc == pytest.approx(0.8)
    # The two 0.5s cannot be split: >= 0.9 -> 2/3, >= 0.5 -> TP2 FP1 -> 4/5 (never 1.0).
    thr, dsc = metrics.best_threshold(np.array([0.5, 0.5, 0.9]), np.array([1, 0, 1]))
    assert thr == 0.5 and dsc == pytest.approx(0.8)
    assert metrics.best_threshold(np.array([0.2, 0.7]), np.array([0, 0])) == (float("inf"), 1.0)


def test_best_threshold_equals_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = rng.random((6, 7, 5)) < 0.2
        scores = np.round(rng.random(labels.shape) + 0.6 * labels, 1)  # one decimal: many ties
        brute = max(dice(scores >= t, labels) for t in np.unique(scores))
        thr, dsc = metrics.best_threshold(scores, labels)
        assert dsc == pytest.approx(brute)
        assert dice(scores >= thr, labels) == pytest.approx(dsc)


def test_auprc_by_hand():
    # Thresholds (desc): 0.9 -> TP1 FP0: P=1,   R=1/3
    #                    0.8 -> TP2 FP1: P=2/3, R=2/3 (the tied 0.8 pair enters together)
    #                    0.6 -> TP2 FP2: P=1/2, R=2/3
    #                    0.3 -> TP3 FP2: P=3/5, R=1
    # AP = 1/3 * 1 + 1/3 * 2/3 + 0 * 1/2 + 1/3 * 3/5 = 1/3 + 2/9 + 1/5 = 34/45 = 0.7556
    scores = np.array([0.9, 0.8, 0.8, 0.6, 0.3])
    labels = np.array([1, 0, 1, 0, 1])
    assert metrics.auprc(scores, labels) == pytest.approx(34 / 45)
    assert metrics.auprc(scores[[0, 2, 1, 3, 4]], labels[[0, 2, 1, 3, 4]]) == pytest.approx(
        34 / 45
    )  # tie order
    assert np.isnan(metrics.auprc(scores, np.zeros(5)))


def _brute_force_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    ap, prev_recall = 0.0, 0.0
    for t in np.unique(scores)[::-1]:
        pred = scores >= t
        tp = np.sum(pred & labels)
        recall = tp / labels.sum()
        ap += (recall - prev_recall) * tp / pred.sum()
        prev_recall = recall
    return ap


def test_auprc_equals_brute_force_and_sklearn_with_ties():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(1)
    for _ in range(5):
        labels = rng.random(300) < 0.3
        scores = np.round(rng.random(300) + 0.5 * labels, 1)
        got = metrics.auprc(scores, labels)
        assert got == pytest.approx(_brute_force_ap(scores, labels))
        assert got == pytest.approx(average_precision_score(labels, scores))


def test_remove_small_components_3d():
    vol = np.zeros((20, 20, 20), bool)
    vol[1, 1, 1] = True  # 1 voxel
    vol[5, 5, 2:9] = True  # 7 voxels: removed (<= 7)
    vol[10, 2:10, 10] = True  # 8 voxels: kept
    vol[14:17, 14:17, 14:17] = True  # 27 voxels: kept
    for i in range(8):  # 8 voxels touching only at corners: separate with faces, one blob with all
        vol[2 + i, 12 + i, 3 + i] = True
    out = anomaly_maps.remove_small_components(vol, max_size=7)
    want = np.zeros_like(vol)
    want[10, 2:10, 10] = True
    want[14:17, 14:17, 14:17] = True
    np.testing.assert_array_equal(out, want)
    out26 = anomaly_maps.remove_small_components(vol, max_size=7, connectivity=3)
    assert out26.sum() == 8 + 27 + 8 and not out26[5, 5, 2]


def test_anomaly_map_masks_with_eroded_brain():
    x = np.full((7, 7, 7), 0.5)
    x_hat = x - 0.2
    brain = np.zeros_like(x, dtype=bool)
    brain[1:6, 1:6, 1:6] = True
    amap = anomaly_maps.anomaly_map(x, x_hat, brain)
    inner = np.zeros_like(brain)
    inner[2:5, 2:5, 2:5] = True  # one face-connected erosion of the 5^3 cube
    np.testing.assert_allclose(amap[inner], 0.2)
    np.testing.assert_array_equal(amap[~inner], 0.0)
    np.testing.assert_allclose(anomaly_maps.anomaly_map(x, x_hat, squared=True), 0.04)
    assert (anomaly_maps.anomaly_map(x, x_hat, brain, erosion_iterations=0) > 0).sum() == 125


def test_median_filter_removes_spikes_keeps_blocks():
    vol = np.zeros((12, 12, 12))
    vol[3, 3, 3] = 1.0  # isolated spike
    vol[6:12, 6:12, 6:12] = 2.0  # large block in a corner
    out = anomaly_maps.median_filter_3d(vol, size=5)
    assert out[3, 3, 3] == 0.0
    assert out[9, 9, 9] == 2.0
    with pytest.raises(ValueError):
        anomaly_maps.median_filter_3d(vol[0])


def test_binary_scores_and_psnr():
    pred = np.array([1, 1, 0, 0, 0], bool)
    ref = np.array([1, 0, 1, 0, 0], bool)
    s = anomaly_maps.binary_scores(pred, ref)
    assert s == pytest.approx({"dsc": 0.5, "tpr": 0.5, "tnr": 2 / 3})
    assert metrics.psnr(np.zeros((4, 4)), np.full((4, 4), 0.1), 1.0) == pytest.approx(20.0)
    assert metrics.psnr(np.ones(3), np.ones(3), 1.0) == float("inf")


def test_ssim_constant_images_and_identity():
    # Constant images: no variance, so SSIM = luminance term (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01)^2.
    a, b, c1 = 0.2, 0.6, 1e-4
    got = metrics.ssim(np.full((16, 16), a), np.full((16, 16), b), data_range=1.0)
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))
    x = np.random.default_rng(0).random((12, 13, 14))
    assert metrics.ssim(x, x, data_range=1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        metrics.ssim(np.zeros((8, 20)), np.zeros((8, 20)), 1.0)  # smaller than the 11-pixel window


def test_ssim_equals_explicit_gaussian_windows():
    # With the half-window crop, every kept pixel's 11x11 window lies inside the image, so SSIM is the
    # mean over those pixels of the textbook formula with normalised Gaussian weights (sigma 1.5).
    rng = np.random.default_rng(2)
    x = rng.random((17, 18))
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    g = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for i in range(5, 17 - 5):
        for j in range(5, 18 - 5):
            px, py = x[i - 5 : i + 6, j - 5 : j + 6], y[i - 5 : i + 6, j - 5 : j + 6]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * px * px).sum() - mx**2, (w * py * py).sum() - my**2
            cxy = (w * px * py).sum() - mx * my
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    assert metrics.ssim(x, y, data_range=1.0) == pytest.approx(np.mean(vals), rel=1e-10)
    assert metrics.ssim(x, y, data_range=1.0) < 0.9


def test_the_threshold_is_applied_by_the_rule_it_was_chosen_by():
    """best_threshold picks t for `score >= t`; applying it must give the Dice it promised (ties included)."""
    rng = np.random.default_rng(3)
    label = rng.random((6, 8, 8)) < 0.3
    amap = np.round(
        np.where(label, rng.uniform(0.3, 1.0, label.shape), rng.uniform(0.0, 0.6, label.shape)), 1
    )
    brain = np.ones_like(label)
    threshold, best = metrics.best_threshold(amap[brain], label[brain])
    assert np.any(amap == threshold)  # the threshold is one of the scores: `>` would drop those voxels
    config = ml_collections.ConfigDict({"anomaly": {"min_component": 0}})
    scores, pred = anomaly_maps.tumour_scores(amap, label, brain, threshold, config)
    assert scores["dsc"] == pytest.approx(best, abs=1e-9)
