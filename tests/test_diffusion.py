"""Schedules, the forward process, and the samplers (determinism, oracle recovery, DDPM == DDIM(eta=1))."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax.diffusion import process, samplers
from diffseg_jax.diffusion.schedules import cosine_betas, linear_betas, make_schedule


def test_linear_schedule_endpoints_and_cumprod():
    betas = linear_betas(1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    schedule = make_schedule("linear", 1000)
    np.testing.assert_allclose(schedule.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-5)
    # T=1000 linear ends nearly at pure noise.
    assert float(schedule.alphas_cumprod[-1]) < 1e-4


def test_cosine_schedule_matches_closed_form():
    T, s = 100, 0.008
    ab = np.cumprod(1 - cosine_betas(T))
    f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    expected = f(np.arange(1, T + 1)) / f(0)
    np.testing.assert_allclose(ab[:-1], expected[:-1], rtol=1e-6)  # last beta is clipped
    assert np.all(np.diff(ab) < 0)


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown noise schedule"):
        make_schedule("quadratic", 10)


def test_q_sample_and_parameterisation_round_trip():
    schedule = make_schedule("linear", 1000)
    key = jax.random.PRNGKey(0)
    x0 = jax.random.uniform(key, (3, 8, 8, 2), minval=-1, maxval=1)
    noise = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
    t = jnp.array([0, 500, 999])
    x_t = process.q_sample(schedule, x0, t, noise)
    ab = np.asarray(schedule.alphas_cumprod)[np.asarray(t)][:, None, None, None]
    np.testing.assert_allclose(x_t, np.sqrt(ab) * x0 + np.sqrt(1 - ab) * noise, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(process.eps_from_x0(schedule, x_t, t, x0), noise, atol=2e-3)
    np.testing.assert_allclose(process.x0_from_eps(schedule, x_t, t, noise), x0, atol=2e-3)


def test_posterior_matches_ddpm_formula():
    schedule = make_schedule("linear", 50)
    x0 = jnp.full((1, 2, 2, 1), 0.7)
    x_t = jnp.full((1, 2, 2, 1), -0.3)
    t = jnp.array([20])
    mean, var = process.posterior_mean_variance(schedule, x0, x_t, t)
    b = np.asarray(schedule.betas)
    ab = np.asarray(schedule.alphas_cumprod)
    i = 20
    expected_mean = (
        np.sqrt(ab[i - 1]) * b[i] / (1 - ab[i]) * 0.7
        + np.sqrt(1 - b[i]) * (1 - ab[i - 1]) / (1 - ab[i]) * -0.3
    )
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-5)
    np.testing.assert_allclose(var, b[i] * (1 - ab[i - 1]) / (1 - ab[i]), rtol=1e-5)


def test_ddpm_step_equals_ddim_eta_one_for_consecutive_steps():
    """DDIM with eta=1 between consecutive steps is the DDPM ancestral step (same mean and noise)."""
    schedule = make_schedule("linear", 100)
    key = jax.random.PRNGKey(3)
    x0 = jax.random.uniform(key, (2, 4, 4, 1), minval=-1, maxval=1)
    x_t = jax.random.normal(jax.random.PRNGKey(4), x0.shape)
    t = jnp.array(40)
    eps = process.eps_from_x0(schedule, x_t, t, x0)
    noise_key = jax.random.PRNGKey(5)
    ddpm = samplers.ddpm_step(schedule, x0, x_t, t, noise_key)
    ddim = samplers.ddim_step(schedule, x0, eps, t, t - 1, noise_key, eta=1.0)
    np.testing.assert_allclose(ddpm, ddim, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_oracle_denoiser_recovers_the_target(method):
    """With a network that always predicts the true x0, every sampler must end exactly at it."""
    schedule = make_schedule("linear", 40)
    target = jnp.where(jnp.arange(16).reshape(1, 4, 4, 1) % 3 == 0, 1.0, -1.0)
    out = samplers.sample(
        lambda x_t, t: target,
        schedule,
        "x0",
        target.shape,
        jax.random.PRNGKey(0),
        method=method,
        num_steps=7,
        return_trajectory=True,
    )
    np.testing.assert_allclose(out["x0"], target)
    expected_len = 40 if method == "ddpm" else 7
    assert out["trajectory"].shape == (expected_len,) + target.shape


def test_sampler_is_deterministic_under_a_key_and_varies_across_keys():
    schedule = make_schedule("linear", 100)
    denoise = lambda x_t, t: jnp.tanh(x_t) * 0.5  # noqa: E731  a fixed non-oracle "network"
    run = lambda k: samplers.sample(  # noqa: E731
        denoise, schedule, "x0", (2, 4, 4, 1), jax.random.PRNGKey(k), num_steps=5, eta=0.5
    )["x0"]
    np.testing.assert_array_equal(run(0), run(0))
    assert not np.allclose(run(0), run(1))


def test_sampling_timesteps():
    np.testing.assert_array_equal(samplers.sampling_timesteps(1000, 5), [999, 749, 500, 250, 0])
    assert len(samplers.sampling_timesteps(10, None)) == 10
    with pytest.raises(ValueError):
        samplers.sampling_timesteps(10, 0)


def test_x0_loss_weighting_is_min_snr():
    schedule = make_schedule("linear", 1000)
    x0 = jnp.ones((2, 2, 2, 1))
    noise = jnp.zeros_like(x0)
    t = jnp.array([0, 999])
    x_t = process.q_sample(schedule, x0, t, noise)
    out = x0 + 0.1  # x0 error 0.1 everywhere
    terms = process.diffusion_losses(schedule, "x0", x_t, t, out, x0, noise, min_snr_gamma=5.0)
    snr = np.asarray(schedule.snr)[[0, 999]]
    np.testing.assert_allclose(terms["x0_mse"], [0.01, 0.01], rtol=1e-4)
    np.testing.assert_allclose(terms["noise_mse"], 0.01 * np.minimum(snr, 5.0), rtol=1e-3)


def test_timestep_power_skews_training_steps_towards_high_noise_and_power_one_is_uniform():
    key = jax.random.PRNGKey(3)
    uniform = process.sample_timesteps(key, 20_000, 1000)
    np.testing.assert_array_equal(uniform, jax.random.randint(key, (20_000,), 0, 1000))
    skewed = np.asarray(process.sample_timesteps(key, 20_000, 1000, power=2.0))
    assert skewed.min() >= 0 and skewed.max() <= 999
    assert abs(np.mean(skewed >= 500) - 0.75) < 0.02  # P(t >= T/2) = 1 - 2^-power
    with pytest.raises(ValueError, match="power"):
        process.sample_timesteps(key, 4, 1000, power=0.0)


def test_clipped_x0_term_stays_bounded_for_eps_prediction_at_high_noise():
    """An eps error of 0.1 at t = 999 is an x0 error of ~16 unclipped; clipped to [-1, 1] it is at most 2."""
    schedule = make_schedule("linear", 1000)
    key_x, key_n = jax.random.split(jax.random.PRNGKey(0))
    x0 = jnp.sign(jax.random.normal(key_x, (2, 8, 8, 1)))
    noise = jax.random.normal(key_n, x0.shape)
    t = jnp.array([999, 10])
    x_t = process.q_sample(schedule, x0, t, noise)
    eps_hat = noise + 0.1
    raw = process.diffusion_losses(schedule, "eps", x_t, t, eps_hat, x0, noise)
    clipped = process.diffusion_losses(schedule, "eps", x_t, t, eps_hat, x0, noise, x0_clip=True)
    assert float(raw["x0_mse"][0]) > 200.0
    assert float(clipped["x0_mse"][0]) <= 4.0
    # Clipping towards the data range never adds error; at low noise both are tiny.
    assert np.all(np.asarray(clipped["x0_mse"]) <= np.asarray(raw["x0_mse"]) + 1e-7)
    assert float(raw["x0_mse"][1]) < 1e-3
    np.testing.assert_allclose(clipped["noise_mse"], raw["noise_mse"])
