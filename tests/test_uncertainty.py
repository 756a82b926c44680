"""Stepwise uncertainty sampling against a hand computation of the paper's weighting."""

import jax
import jax.numpy as jnp
import numpy as np

from diffseg_jax import uncertainty
from diffseg_jax.diffusion import samplers
from diffseg_jax.diffusion.schedules import make_schedule


def _hand_fusion(trajectory, steps, T):
    """numpy: X_t = mean_S prob, U = -X log X, w = exp(sigmoid(t/T)) (1 - U), sum w X / sum w."""
    probs = np.clip((np.asarray(trajectory) + 1) / 2, 0, 1).mean(axis=1)  # [K, ...]
    u = -probs * np.log(np.clip(probs, 1e-6, 1))
    w = np.exp(1 / (1 + np.exp(-np.asarray(steps) / T)))[:, None, None, None, None] * (1 - u)
    return (w * probs).sum(0) / w.sum(0), (w * u).sum(0) / w.sum(0)


def test_weighting_matches_hand_computation():
    schedule = make_schedule("linear", 100)
    shape = (2, 4, 4, 1)
    num_samples, num_steps = 3, 6

    def denoise(x_t, t):  # depends on the chain's state, so the S chains differ
        return jnp.tanh(x_t + t / 100.0)

    key = jax.random.PRNGKey(0)
    out = uncertainty.stepwise_uncertainty_sample(
        denoise, schedule, "x0", shape, key, num_samples=num_samples, num_steps=num_steps
    )
    # Same key, same chains: the plain sampler's trajectory gives the hand-computed fusion.
    reference = samplers.sample(
        jax.vmap(denoise, in_axes=(0, None)),
        schedule,
        "x0",
        (num_samples,) + shape,
        key,
        num_steps=num_steps,
        return_trajectory=True,
    )
    steps = samplers.sampling_timesteps(100, num_steps)
    prob, unc = _hand_fusion(reference["trajectory"], steps, 100)
    np.testing.assert_allclose(out["prob"], prob, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["uncertainty"], unc, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["mask"], prob > 0.5)
    # The chains really are different Monte Carlo samples.
    assert np.std(np.asarray(reference["x0"]), axis=0).max() > 1e-3


def test_weights_favour_confident_voxels_and_noisier_steps():
    w_conf, _ = uncertainty.step_weight(jnp.array(1.0), jnp.array(10), 1000)
    w_unsure, _ = uncertainty.step_weight(jnp.array(1 / np.e), jnp.array(10), 1000)
    w_late, _ = uncertainty.step_weight(jnp.array(1.0), jnp.array(900), 1000)
    assert float(w_conf) > float(w_unsure)
    assert float(w_late) > float(w_conf)
    np.testing.assert_allclose(w_conf, np.exp(1 / (1 + np.exp(-0.01))), rtol=1e-6)


def test_memory_does_not_depend_on_number_of_steps():
    """The fused result is carried, not stacked: the compiled program's temp memory is step-independent."""
    schedule = make_schedule("linear", 1000)
    shape = (4, 16, 16, 3)

    def compiled_bytes(k):
        fn = jax.jit(
            lambda key: uncertainty.stepwise_uncertainty_sample(
                lambda x, t: jnp.tanh(x), schedule, "x0", shape, key, num_samples=3, num_steps=k
            )
        )
        stats = fn.lower(jax.random.PRNGKey(0)).compile().memory_analysis()
        return stats.temp_size_in_bytes

    small, large = compiled_bytes(10), compiled_bytes(100)
    assert large <= small * 1.1 + 4096
