"""The anomaly detectors' networks, losses and test-time reconstructions, on synthetic batches (no data)."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax.diffusion import masks, samplers
from diffseg_jax.diffusion.schedules import make_schedule
from diffseg_jax.methods import patched_ddpm, reconstruction
from diffseg_jax.methods.registry import build_method
from diffseg_jax.models.anomaly import ModalityAwarePrompting, ReconstructionUNet
from diffseg_jax.tasks import anomaly as task
from diffseg_jax.tasks import anomaly_levels

CONFIGS = ("anomaly_dae", "anomaly_anoddpm", "anomaly_pddpm", "anomaly_mddpm", "anomaly_uma_ddpm")


def smoke_config(name: str, variant: str = ""):
    module = importlib.import_module(f"configs.{name}")
    return module.get_config("smoke" + (f",{variant}" if variant else ""))


def blob_batch(n: int = 4, size: int = 32, seed: int = 0) -> dict[str, jnp.ndarray]:
    """Smooth 'brains': a disc with a gradient, in [0, 1]; label = the disc (the brain mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    images, brains = [], []
    for _ in range(n):
        cy, cx = rng.uniform(0.4, 0.6, 2)
        brain = (yy - cy) ** 2 + (xx - cx) ** 2 < 0.12
        images.append(brain * (0.3 + 0.5 * xx + 0.1 * rng.standard_normal((size, size))).clip(0, 1))
        brains.append(brain)
    as_batch = lambda a: jnp.asarray(np.stack(a)[..., None], jnp.float32)  # noqa: E731
    return {"image": as_batch(images), "label": as_batch(brains)}


# mDDPM is pDDPM's code path plus `corrupt` (tested below and in test_anomaly_blocks); its smoke run is in
# test_anomaly_cli.
@pytest.mark.parametrize("name", [c for c in CONFIGS if c != "anomaly_mddpm"])
def test_each_detector_reconstructs_at_the_input_shape_and_its_loss_falls(name):
    config = smoke_config(name)
    method = build_method(config)
    batch = blob_batch()
    params = jax.jit(method.init)(jax.random.PRNGKey(0), batch)
    opt = __import__("optax").adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, key):
        (loss, _), grads = jax.value_and_grad(method.loss, has_aux=True)(params, batch, key)
        updates, state = opt.update(grads, state, params)
        return __import__("optax").apply_updates(params, updates), state, loss

    key = jax.random.PRNGKey(1)
    losses = []
    for i in range(30):
        params, state, loss = step(params, state, jax.random.fold_in(key, i % 3))
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    recon = jax.jit(method.predict)(params, batch["image"], jax.random.PRNGKey(2))["reconstruction"]
    assert recon.shape == batch["image"].shape
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0


def test_patchwise_reconstruction_noises_one_patch_at_a_time_and_stitches_the_patches():
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 1)), jnp.float32)
    noise = jnp.ones_like(x) * 5.0

    def x0_fn(x_in, mask):
        # an oracle that returns the clean image, tagged with how many input pixels were noised
        return x + jnp.sum(x_in != x).astype(x.dtype)

    out = reconstruction.patchwise_reconstruct(x0_fn, x, noise, lambda a, n: a + n, patch=4, stride=4)
    # every pixel comes from the call that noised its own 4x4 patch, and only that patch, in both images
    np.testing.assert_allclose(np.asarray(out), np.asarray(x) + 2 * 16, rtol=1e-6)


def test_masp_weight_vector_is_one_cosine_similarity_per_prompt():
    h = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 3, 8))
    module = ModalityAwarePrompting(num_prompts=5)
    params = module.init(jax.random.PRNGKey(1), h)
    out = np.asarray(module.apply(params, h))
    p = jax.tree.map(np.asarray, params["params"])
    q = np.asarray(h).mean(axis=(1, 2)) * p["Q"]  # [B, C]
    cos = (q @ p["K"].T) / (np.linalg.norm(q, axis=-1, keepdims=True) * np.linalg.norm(p["K"], axis=-1))
    assert cos.shape == (2, 5)  # a weight vector: one weight per prompt and image, not per pixel
    np.testing.assert_allclose(out, np.broadcast_to((cos @ p["V"])[:, None, None, :], out.shape), rtol=1e-4)


def test_uma_ddpm_has_every_dual_domain_loss_term_and_each_has_a_gradient():
    """l_freq = |A0 - A_img| + |A0 - A_rec|, l_pixel = |X0 - X_freq| + |X0 - X_rec|; A_rec is its own head."""
    config = smoke_config("anomaly_uma_ddpm")
    method = build_method(config)
    batch = blob_batch(2, size=32)
    params = method.init(jax.random.PRNGKey(0), batch)
    terms = ("l_freq_img", "l_freq_rec", "l_pixel_freq", "l_pixel_rec")

    def stacked(p):
        total, metrics = method.loss(p, batch, jax.random.PRNGKey(1))
        return jnp.stack([metrics[k] for k in terms] + [total])

    values, jac = jax.jit(lambda p: (stacked(p), jax.jacrev(stacked)(p)))(params)
    values = np.asarray(values)
    a = config.anomaly
    expected_total = a.freq_weight * (values[0] + values[1]) + a.pixel_weight * (values[2] + values[3])
    np.testing.assert_allclose(values[4], expected_total, rtol=1e-5)
    for i, term in enumerate(terms):
        norm = sum(float(np.sum(np.asarray(g[i]) ** 2)) for g in jax.tree.leaves(jac))
        assert values[i] > 0 and norm > 0, term
    # The output conv's second half is A_rec: the amplitude terms reach it, the X_rec pixel term does not.
    head = [
        g
        for path, g in jax.tree_util.tree_flatten_with_path(jac)[0]
        if "Decoder" in jax.tree_util.keystr(path)
    ]
    kernel = [g for g in head if g.ndim == 5 and g.shape[-1] == 2][-1]  # [terms, kh, kw, in, 2]
    a_rec_grad = np.abs(np.asarray(kernel[..., 1])).sum(axis=(1, 2, 3))
    assert a_rec_grad[1] > 0 and a_rec_grad[2] > 0 and a_rec_grad[3] == 0


def test_amplitude_with_the_images_own_phase_gives_the_image_back():
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 1))
    back = reconstruction.image_from_amplitude(reconstruction.fft_amplitude(x), x)
    np.testing.assert_allclose(np.asarray(back), np.asarray(x), atol=1e-5)


def test_modality_aware_network_adds_the_mam_and_still_maps_images_to_images():
    x = jnp.zeros((2, 16, 16, 1))
    t = jnp.zeros((2,), jnp.int32)
    kwargs = dict(out_channels=1, base_features=8, multipliers=(1, 2), attention_levels=(1,))
    key = jax.random.PRNGKey(0)
    plain = jax.eval_shape(ReconstructionUNet(**kwargs).init, key, x, t)["params"]
    mam = jax.eval_shape(ReconstructionUNet(**kwargs, modality_aware=True).init, key, x, t)["params"]
    assert "ModalityAwareModule_0" in mam and "ModalityAwareModule_0" not in plain
    assert "MambaBlock_0" in mam["ModalityAwareModule_0"]
    with pytest.raises(ValueError, match="time-conditioned"):
        ReconstructionUNet(**kwargs).init(jax.random.PRNGKey(0), x)


def test_uma_masking_hides_content_in_about_half_the_batch_and_the_loss_covers_the_whole_image():
    config = smoke_config("anomaly_uma_ddpm")
    images = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (64, 16, 16, 1)), jnp.float32)
    corrupted, region = patched_ddpm.corrupt(config, jax.random.PRNGKey(0), images)
    changed = np.asarray(jnp.any(jnp.abs(corrupted - images) > 1e-6, axis=(1, 2, 3)))
    assert 16 < changed.sum() < 48
    assert bool(region.all())
    config.anomaly.uma_mask_fraction = 1.0  # the paper: every example is masked
    every, _ = patched_ddpm.corrupt(config, jax.random.PRNGKey(0), images)
    assert bool(jnp.all(jnp.any(jnp.abs(every - images) > 1e-6, axis=(1, 2, 3))))
    assert (
        importlib.import_module("configs.anomaly_uma_ddpm").get_config("paper").anomaly.uma_mask_fraction == 1
    )
    pconfig = smoke_config("anomaly_pddpm")
    same, nothing = patched_ddpm.corrupt(pconfig, jax.random.PRNGKey(0), images)
    assert bool((same == images).all()) and not bool(nothing.any())


def test_fft_amplitude_ignores_circular_shifts_and_keeps_the_energy():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 1))
    a = reconstruction.fft_amplitude(x)
    np.testing.assert_allclose(a, reconstruction.fft_amplitude(jnp.roll(x, (2, 3), (1, 2))), rtol=1e-5)
    np.testing.assert_allclose(float(jnp.sum(a**2)), float(jnp.sum(x**2)), rtol=1e-5)


def test_partial_chain_from_step_zero_is_one_x0_prediction_and_rejects_bad_starts():
    schedule = make_schedule("linear", 100)
    x = jnp.ones((1, 4, 4, 1)) * 0.5
    zero_eps = lambda x_t, t: jnp.zeros_like(x_t)  # noqa: E731
    out = samplers.sample_from(zero_eps, schedule, "eps", x, 0, jax.random.PRNGKey(0))
    expected = 0.5 / float(schedule.sqrt_alphas_cumprod[0])  # eps = 0 -> x0 = x_t / sqrt(alpha_bar_0)
    np.testing.assert_allclose(np.asarray(out), np.clip(expected, -1, 1), rtol=1e-6)
    with pytest.raises(ValueError, match="start_step"):
        samplers.sample_from(lambda a, t: a, schedule, "eps", x, 100, jax.random.PRNGKey(0))


def test_sequences_parse_from_the_command_line_form_and_reject_unknown_names():
    config = smoke_config("anomaly_uma_ddpm", "unified")
    assert task.sequences(config) == ("t1", "t2")
    config.data.sequences = "T2"
    assert task.sequences(config) == ("t2",)
    config.data.sequences = "t2,FLAIR"
    assert task.sequences(config) == ("t2", "flair")
    for bad in ("t1ce", "t2,t2", ""):
        config.data.sequences = bad
        with pytest.raises(ValueError, match="data.sequences"):
            task.sequences(config)
    with pytest.raises(ValueError, match="variant"):
        smoke_config("anomaly_uma_ddpm", "nope")


def test_unified_examples_stack_each_sequence_as_its_own_single_channel_example():
    image = np.stack([np.zeros((3, 4, 4)), np.ones((3, 4, 4))], axis=-1)
    brain = np.ones((3, 4, 4, 1))
    out = task.single_sequence_examples(image, brain)
    assert out["image"].shape == (6, 4, 4, 1) and out["label"].shape == (6, 4, 4, 1)
    assert out["image"][:3].max() == 0 and out["image"][3:].min() == 1


def test_uma_ddpm_test_input_is_the_image_its_high_pass_view_or_the_training_masking():
    config = smoke_config("anomaly_uma_ddpm")
    images = blob_batch()["image"]
    key = jax.random.PRNGKey(3)
    readings = {}
    for reading in patched_ddpm.TEST_INPUTS:
        config.anomaly.test_input = reading
        readings[reading] = patched_ddpm.test_input(config, key, images)
    np.testing.assert_array_equal(readings["plain"], images)
    a = config.anomaly
    high = masks.frequency_filter(images, a.uma_half_width, keep="high")
    np.testing.assert_allclose(readings["high_frequency"], high, atol=1e-6)
    hidden = np.asarray(readings["masked"] == 0) & np.asarray(high != 0)
    assert 0.1 < hidden.mean() < 0.5  # random patches hidden (ratio 0.25), the rest the high-pass view
    config.anomaly.corruption = "none"  # pDDPM: always the image
    np.testing.assert_array_equal(patched_ddpm.test_input(config, key, images), images)
    config.anomaly.corruption, config.anomaly.test_input = "uma", "blurred"
    with pytest.raises(ValueError, match="test_input"):
        patched_ddpm.test_input(config, key, images)


def test_noise_levels_each_get_their_own_config_and_bad_levels_are_refused():
    config = smoke_config("anomaly_pddpm")
    config.anomaly.levels = "250, 750"
    per_level = anomaly_levels.level_configs(config)
    assert [c.anomaly.test_step for c in per_level] == [250, 750]
    assert config.anomaly.test_step == 499  # the run's own config is left alone
    anoddpm = smoke_config("anomaly_anoddpm")
    anoddpm.anomaly.levels = "100,300"
    assert [c.anomaly.start_step for c in anomaly_levels.level_configs(anoddpm)] == [100, 300]
    assert anomaly_levels.level_configs(smoke_config("anomaly_pddpm")) != []  # no levels: the config itself
    for name, levels, problem in (
        ("anomaly_dae", "250", "no noise level"),
        ("anomaly_pddpm", "250,1000", "outside"),
        ("anomaly_pddpm", "low", "integers"),
    ):
        bad = smoke_config(name)
        bad.anomaly.levels = levels
        with pytest.raises(ValueError, match=problem):
            anomaly_levels.level_configs(bad)


def test_maps_of_several_reconstructions_are_averaged():
    from data_pipelines.anomaly_data import AnomalyVolume

    rng = np.random.default_rng(0)
    image = rng.uniform(size=(6, 16, 16, 1)).astype(np.float32)
    brain = np.zeros((6, 16, 16), bool)
    brain[1:5, 3:13, 3:13] = True
    volume = AnomalyVolume(
        "case", image * brain[..., None], brain, brain & False, np.eye(4), __import__("pathlib").Path(".")
    )
    config = smoke_config("anomaly_pddpm")
    keep = lambda images: images  # noqa: E731  a perfect reconstruction: zero map
    flat = lambda images: np.full_like(images, 0.5)  # noqa: E731
    amap, recon = task.map_and_reconstruction([keep, flat], volume, 0, config)
    maps = [
        task.anomaly_maps.volume_map(
            volume.image[..., 0], task.reconstruct_volume(p, volume, 0), brain, config
        )
        for p in (keep, flat)
    ]
    np.testing.assert_allclose(amap, (maps[0] + maps[1]) / 2, atol=1e-6)
    assert amap.max() > 0 and maps[0].max() == 0
    single, _ = task.map_and_reconstruction([flat], volume, 0, config)
    np.testing.assert_allclose(single, maps[1], atol=1e-6)
    np.testing.assert_allclose(
        recon[brain.any(axis=(1, 2))], 0.5 * (volume.image[..., 0] + 0.5)[brain.any(axis=(1, 2))], atol=1e-6
    )
