"""BTSegDiff: diffusion over the mask conditioned on the four sequences, stepwise uncertainty sampling.

Loss = noise_weight * ||eps - eps_hat||^2 + x0_weight * mean((x0_hat - G)^2) (paper: 1 and 1/2), plus
seg_weight * (soft Dice + BCE) of the x0 estimate read as a probability: the auxiliary term of Diff-UNet,
whose code BTSegDiff's copies. It is off in the paper preset and on in the CPU demo, where tumours cover ~1%
of the pixels and the MSE terms alone collapse to "all background" within a short budget. Masks are
diffused in [-1, 1]. Prediction: S chains fused by `uncertainty.stepwise_uncertainty_sample`, with the
condition encoder run once per image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from diffseg_jax import uncertainty
from diffseg_jax.diffusion import process
from diffseg_jax.diffusion.schedules import make_schedule
from diffseg_jax.methods.base import (
    Method,
    binary_cross_entropy,
    num_outputs,
    soft_dice_loss,
    unet_kwargs,
)
from diffseg_jax.models.btsegdiff import BTSegDiffNet


def build(config: ml_collections.ConfigDict) -> Method:
    d, s = config.diffusion, config.sampling
    model = BTSegDiffNet(**unet_kwargs(config), fourier_fusion=config.model.fourier_fusion)
    schedule = make_schedule(d.schedule, d.num_steps)

    def init(key, batch):
        label = batch["label"]
        t = jnp.zeros(label.shape[:1], jnp.int32)
        return model.init(key, label, t, batch["image"])["params"]

    def loss(params, batch, key):
        t_key, noise_key, dropout_key = jax.random.split(key, 3)
        x0 = batch["label"] * 2.0 - 1.0
        t = process.sample_timesteps(t_key, x0.shape[0], d.num_steps)
        noise = jax.random.normal(noise_key, x0.shape)
        x_t = process.q_sample(schedule, x0, t, noise)
        out = model.apply(
            {"params": params}, x_t, t, batch["image"], train=True, rngs={"dropout": dropout_key}
        )
        terms = process.diffusion_losses(
            schedule, d.parameterization, x_t, t, out, x0, noise, d.min_snr_gamma
        )
        noise_mse, x0_mse = jnp.mean(terms["noise_mse"]), jnp.mean(terms["x0_mse"])
        total = config.loss.noise_weight * noise_mse + config.loss.x0_weight * x0_mse
        metrics = {"noise_mse": noise_mse, "x0_mse": x0_mse}
        if config.loss.seg_weight:
            # sigmoid(4 x0) has the same 0.5 boundary as the clipped (x0 + 1) / 2 used at inference, but
            # never saturates: with the clipped map, outputs below -1 get no Dice/BCE gradient and the
            # model collapsed to "all background" mid-training (measured).
            prob = jax.nn.sigmoid(4.0 * terms["x0_hat"])
            seg = soft_dice_loss(prob, batch["label"]) + binary_cross_entropy(prob, batch["label"])
            total = total + config.loss.seg_weight * seg
            metrics["seg_loss"] = seg
        return total, metrics

    def predict(params, images, key):
        variables = {"params": params}
        cond = model.apply(variables, images, method=BTSegDiffNet.encode_condition)
        batch = images.shape[0]

        def denoise(x_t, t):
            steps = jnp.full((batch,), t, jnp.int32)
            return model.apply(variables, x_t, steps, cond, method=BTSegDiffNet.denoise)

        shape = images.shape[:3] + (num_outputs(config.data.target),)
        out = uncertainty.stepwise_uncertainty_sample(
            denoise,
            schedule,
            d.parameterization,
            shape,
            key,
            num_samples=s.num_samples,
            method=s.method,
            num_steps=s.num_steps,
            eta=s.eta,
        )
        return {"prob": out["prob"], "uncertainty": out["uncertainty"]}

    return Method("btsegdiff", init, loss, predict)
