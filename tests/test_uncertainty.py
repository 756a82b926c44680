"""Stepwise uncertainty sampling against a hand computation of the paper's weighting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax import uncertainty
from diffseg_jax.diffusion import samplers
from diffseg_jax.diffusion.schedules import make_schedule


def _hand_fusion(trajectory):
    """numpy: X_t = mean_S prob, U = -X log X, w = exp(sigmoid(t/K)) (1 - U) for t = 1..K along the chain."""
    probs = np.clip((np.asarray(trajectory) + 1) / 2, 0, 1).mean(axis=1)  # [K, ...]
    k = probs.shape[0]
    u = -probs * np.log(np.clip(probs, 1e-6, 1))
    t = np.arange(1, k + 1)
    w = np.exp(1 / (1 + np.exp(-t / k)))[:, None, None, None, None] * (1 - u)
    return (w * probs).sum(0) / w.sum(0), (w * u).sum(0) / w.sum(0)


def _plain_chains(denoise, schedule, shape, key, num_samples, num_steps):
    """The plain sampler's S chains with their trajectories (the same key draws the same chains)."""
    return samplers.sample(
        jax.vmap(denoise, in_axes=(0, None)),
        schedule,
        "x0",
        (num_samples,) + shape,
        key,
        num_steps=num_steps,
        return_trajectory=True,
    )


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
    reference = _plain_chains(denoise, schedule, shape, key, num_samples, num_steps)
    prob, unc = _hand_fusion(reference["trajectory"])
    np.testing.assert_allclose(out["prob"], prob, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["uncertainty"], unc, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["mask"], prob > 0.5)
    # The chains really are different Monte Carlo samples.
    assert np.std(np.asarray(reference["x0"]), axis=0).max() > 1e-3


def test_fusing_the_last_k_estimates_equals_the_hand_fusion_of_the_chains_end():
    schedule = make_schedule("linear", 100)
    shape, num_samples, num_steps, last = (2, 4, 4, 1), 3, 8, 3

    def denoise(x_t, t):
        return jnp.tanh(x_t + t / 100.0)

    key = jax.random.PRNGKey(2)
    kwargs = {"num_samples": num_samples, "num_steps": num_steps}
    out = uncertainty.stepwise_uncertainty_sample(denoise, schedule, "x0", shape, key, last=last, **kwargs)
    every = uncertainty.stepwise_uncertainty_sample(denoise, schedule, "x0", shape, key, **kwargs)
    reference = _plain_chains(denoise, schedule, shape, key, num_samples, num_steps)
    trajectory = np.asarray(reference["trajectory"])
    probs = np.clip((trajectory + 1) / 2, 0, 1).mean(axis=1)
    u = -probs * np.log(np.clip(probs, 1e-6, 1))
    t = np.arange(1, num_steps + 1)  # the paper's t / T over the whole chain, only the last `last` kept
    w = (
        np.exp(1 / (1 + np.exp(-t / num_steps)))[:, None, None, None, None]
        * (1 - u)
        * (t > num_steps - last)[:, None, None, None, None]
    )
    np.testing.assert_allclose(out["prob"], (w * probs).sum(0) / w.sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["uncertainty"], (w * u).sum(0) / w.sum(0), rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(out["prob"]) - np.asarray(every["prob"])).max() > 1e-4  # it changes the fusion
    longer = uncertainty.stepwise_uncertainty_sample(denoise, schedule, "x0", shape, key, last=99, **kwargs)
    np.testing.assert_allclose(longer["prob"], every["prob"], rtol=1e-6)  # k >= the chain: every estimate


def test_weights_favour_confident_voxels_and_later_estimates():
    w_conf, _ = uncertainty.step_weight(jnp.array(1.0), jnp.array(2), 10)
    w_unsure, _ = uncertainty.step_weight(jnp.array(1 / np.e), jnp.array(2), 10)
    w_last, _ = uncertainty.step_weight(jnp.array(1.0), jnp.array(10), 10)
    assert float(w_conf) > float(w_unsure)
    assert float(w_last) > float(w_conf)
    np.testing.assert_allclose(w_conf, np.exp(1 / (1 + np.exp(-0.2))), rtol=1e-6)


@pytest.mark.parametrize("method, num_steps", [("ddim", 5), ("ddpm", None)])
def test_later_estimates_of_the_chain_weigh_more(method, num_steps):
    """Chains whose estimate is 0 at every step but the last (1) or only the first (1): with equally certain
    estimates, the fused probability is the share of the weight, and the last estimate's share is larger."""
    schedule = make_schedule("linear", 20)
    k = len(samplers.visited_steps(schedule, method, num_steps))
    first_step = int(samplers.visited_steps(schedule, method, num_steps)[0])

    def fused(one_at):
        def denoise(x_t, t):  # x0 in {-1, 1}: probabilities 0 or 1, entropy 0, weight exp(sigmoid(t/K))
            return jnp.where(t == one_at, 1.0, -1.0) * jnp.ones_like(x_t)

        out = uncertainty.stepwise_uncertainty_sample(
            denoise,
            schedule,
            "x0",
            (1, 2, 2, 1),
            jax.random.PRNGKey(0),
            num_samples=2,
            method=method,
            num_steps=num_steps,
        )
        return float(out["prob"].mean())

    weights = np.exp(1 / (1 + np.exp(-np.arange(1, k + 1) / k)))
    last, first = fused(0), fused(first_step)
    assert last > first
    np.testing.assert_allclose(last, weights[-1] / weights.sum(), rtol=1e-5)
    np.testing.assert_allclose(first, weights[0] / weights.sum(), rtol=1e-5)


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


def test_mc_dropout_is_the_mean_of_passes_with_dropout_active():
    from configs import unet_baseline
    from diffseg_jax.config_defaults import ConfigError
    from diffseg_jax.methods.base import binary_entropy, unet_kwargs
    from diffseg_jax.methods.registry import build_method
    from diffseg_jax.models.unet import UNet

    config = unet_baseline.get_config("smoke")
    config.data.image_size = 16
    config.model.dropout = 0.5
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 4)), jnp.float32)
    params = build_method(config).init(jax.random.PRNGKey(0), {"image": images})
    leaves, tree = jax.tree.flatten(params)  # the residual blocks' last convs start at zero: perturb them
    noise = [0.1 * jax.random.normal(jax.random.PRNGKey(i), p.shape) for i, p in enumerate(leaves)]
    params = jax.tree.unflatten(tree, [p + n for p, n in zip(leaves, noise, strict=True)])
    key = jax.random.PRNGKey(1)
    plain = build_method(config).predict(params, images, key)["prob"]
    config.eval.mc_dropout = 3
    out = jax.jit(build_method(config).predict)(params, images, key)
    model = UNet(**unet_kwargs(config))
    passes = [
        jax.nn.sigmoid(model.apply({"params": params}, images, train=True, rngs={"dropout": k}))
        for k in jax.random.split(key, 3)
    ]
    np.testing.assert_allclose(out["prob"], np.mean(passes, axis=0), atol=1e-5)
    np.testing.assert_allclose(out["uncertainty"], binary_entropy(out["prob"]), atol=1e-6)
    assert np.abs(np.asarray(passes[0]) - np.asarray(passes[1])).max() > 1e-3  # dropout is active
    assert np.abs(np.asarray(out["prob"]) - np.asarray(plain)).max() > 1e-4
    config.model.dropout = 0.0
    with pytest.raises(ConfigError, match="mc_dropout"):
        build_method(config)
