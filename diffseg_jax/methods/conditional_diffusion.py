"""Diffusion over the mask conditioned on the sequences: the loss and sampler every such method shares.

Loss = noise_weight * ||eps - eps_hat||^2 + x0_weight * mean((x0_hat - G)^2) (BTSegDiff: 1 and 1/2; x0_hat
clipped to [-1, 1] with `loss.x0_clip`, which keeps the term bounded under eps-prediction), plus
seg_weight * (soft Dice + BCE) of the x0 estimate read as a probability: the auxiliary term of Diff-UNet,
whose code BTSegDiff's copies. It is off in the paper presets and on in the CPU demo, where tumours cover ~1%
of the pixels. With x0-prediction the network's raw output r is the mask's logits and x0 = 2 sigmoid(r) - 1
(Diff-UNet's sigmoid on the x0 output): every term then pulls r the same way, whereas with an unbounded x0
the overlap terms push the background below -1 against the MSE and training becomes unstable.
A method may add a loss on the network's recorded intermediates (MedSegDiff-V2's condition model; the
dual-encoder methods' optional image-only head, `condition_head_loss`). Masks are
diffused in [-1, 1]. Prediction: S chains as a vmap axis with the condition computed once per image, fused by
`sampling.fusion`: 'stepwise' (BTSegDiff's stepwise uncertainty), or the chains' final estimates fused by
'mean' or 'staple' (MedSegDiff's public sampler; `ensemble.py`). The uncertainty map, in [0, 1] like every
method's: stepwise, the weighted mean of U_t = -X_t log X_t scaled by e (its maximum is 1/e); otherwise the
entropy (bits) of the fused probability.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffseg_jax import ensemble, uncertainty
from diffseg_jax.config_defaults import ConfigError
from diffseg_jax.diffusion import importance, process
from diffseg_jax.diffusion.schedules import make_schedule
from diffseg_jax.methods.base import (
    Method,
    binary_entropy,
    model_apply,
    num_outputs,
    per_example_soft_dice_loss,
    soft_dice_loss,
)

FUSIONS = ("stepwise",) + tuple(ensemble.FUSIONS)

# (intermediates, batch, t) -> (loss, metrics)
ExtraLoss = Callable[[Any, dict[str, jnp.ndarray], jnp.ndarray], tuple[jnp.ndarray, dict[str, jnp.ndarray]]]


def condition_model_loss(logits: jnp.ndarray, label: jnp.ndarray, t: jnp.ndarray, alpha: int, beta: float):
    """Mean over the batch of [t mod alpha == 0] * (soft Dice + beta * BCE), each per example."""
    dice = per_example_soft_dice_loss(jax.nn.sigmoid(logits), label)
    ce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, label), axis=(1, 2, 3))
    selected = (t % alpha == 0).astype(jnp.float32)
    return jnp.mean(selected * (dice + beta * ce)), {"condition_dice_loss": jnp.mean(dice)}


def condition_head_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The dual-encoder network's head fields from `loss.condition_head_weight` / `condition_head_levels`."""
    levels, most = int(config.loss.get("condition_head_levels", 0)), len(config.model.multipliers)
    if not 0 <= levels <= most:
        raise ConfigError(f"loss.condition_head_levels={levels} must be 0 (every level) or 1..{most}")
    return {
        "condition_head": bool(config.loss.get("condition_head_weight", 0.0)),
        "condition_head_levels": levels,
    }


def condition_head_loss(config: ml_collections.ConfigDict) -> ExtraLoss | None:
    """`loss.condition_head_weight` x (soft Dice + BCE) of the image-only head on the condition encoder
    (`models/condition_head.py`), at every step; None when the weight is 0 (the head is then not built)."""
    weight = config.loss.get("condition_head_weight", 0.0)
    if not weight:
        return None

    def extra_loss(intermediates, batch, t):
        (logits,) = intermediates["condition_logits"]
        loss, metrics = condition_model_loss(logits, batch["label"], t, alpha=1, beta=1.0)
        return weight * loss, metrics

    return extra_loss


def build_conditional_diffusion(
    name: str, model: nn.Module, config: ml_collections.ConfigDict, extra_loss: ExtraLoss | None = None
) -> Method:
    """`model` has `__call__(x_t, t, image, train)`, `encode_condition(image)` and `denoise(x_t, t, cond)`."""
    d, s = config.diffusion, config.sampling
    if s.fusion not in FUSIONS:
        raise ValueError(f"unknown sampling.fusion {s.fusion!r}; expected one of {FUSIONS}")
    if d.get("recycling", "") not in ("", "xT", "xt"):
        raise ValueError(f"unknown diffusion.recycling {d.recycling!r}; expected '', 'xT' or 'xt'")
    if d.get("recycling", "") and d.parameterization == "eps":
        # x_t built from the estimate, the target the reference: the noise target is eps plus
        # sqrt(SNR(t)) (x0_hat - x0), unbounded as t -> 0 (the unclipped x0 term's blow-up, in another form)
        raise ValueError(
            "diffusion.recycling needs diffusion.parameterization='x0': with 'eps' the noise target grows "
            "like sqrt(SNR(t)) at small t"
        )
    importance_sampling = bool(d.get("importance_sampling", False))
    if importance_sampling and d.timestep_power != 1.0:
        raise ValueError(
            "diffusion.importance_sampling draws t from the loss history; it replaces "
            f"diffusion.timestep_power={d.timestep_power} (set it to 1)"
        )
    schedule = make_schedule(d.schedule, d.num_steps)
    bounded = d.parameterization == "x0"
    self_condition = bool(d.get("self_condition", False))
    apply = model_apply(model, config)

    def mask_input(x_t: jnp.ndarray, x0_prev: jnp.ndarray | None = None) -> jnp.ndarray:
        """The network's mask input: x_t, and with self-conditioning the previous x0 estimate (or zeros)."""
        if not self_condition:
            return x_t
        return jnp.concatenate([x_t, jnp.zeros_like(x_t) if x0_prev is None else x0_prev], axis=-1)

    def link(raw: jnp.ndarray) -> jnp.ndarray:
        """x0-prediction goes through x0 = 2 sigmoid(raw) - 1, so `raw` are the mask's logits."""
        return 2.0 * jax.nn.sigmoid(raw) - 1.0 if bounded else raw

    def init(key, batch):
        label = batch["label"]
        t = jnp.zeros(label.shape[:1], jnp.int32)
        return model.init(key, mask_input(label), t, batch["image"])["params"]

    def recycled_x_t(params, batch, x0, t, noise, key):
        """x_t from the model's own x0 estimate for a `recycling_prob` share of the examples; the targets
        stay the reference: the noise target becomes the noise that leads from the reference to that x_t."""
        source_key, pick_key = jax.random.split(key)
        if d.recycling == "xT":
            t_source = jnp.full_like(t, d.num_steps - 1)
            x_source = jax.random.normal(source_key, x0.shape)
        else:
            t_source = t
            x_source = process.q_sample(schedule, x0, t, jax.random.normal(source_key, x0.shape))
        raw_source = apply({"params": params}, mask_input(x_source), t_source, batch["image"], train=False)
        estimate, _ = process.split_prediction(
            schedule, d.parameterization, x_source, t_source, link(raw_source)
        )
        estimate = jax.lax.stop_gradient(jnp.clip(estimate, -1.0, 1.0))
        recycle = jax.random.bernoulli(pick_key, recycling_probability(batch), t.shape)[:, None, None, None]
        x_t = process.q_sample(schedule, jnp.where(recycle, estimate, x0), t, noise)
        return x_t, process.eps_from_x0(schedule, x_t, t, x0)

    def recycling_probability(batch) -> jnp.ndarray | float:
        """`recycling_prob`, reached linearly over the first `recycling_ramp_steps` training steps."""
        ramp = d.get("recycling_ramp_steps", 0)
        if not ramp or "step" not in batch:
            return d.recycling_prob
        return d.recycling_prob * jnp.minimum(1.0, batch["step"].astype(jnp.float32) / ramp)

    def own_estimate(params, batch, x_t, t, key):
        """Self-conditioning's input for one batch: with probability 1/2 the model's x0 estimate from x_t
        alone (no gradient through it; one coin per batch, so the extra forward pass runs half the time),
        else zeros."""

        def estimate(_):
            raw = apply({"params": params}, mask_input(x_t), t, batch["image"], train=False)
            x0_hat, _ = process.split_prediction(schedule, d.parameterization, x_t, t, link(raw))
            return jax.lax.stop_gradient(jnp.clip(x0_hat, -1.0, 1.0))

        use = jax.random.bernoulli(key, 0.5)
        return jax.lax.cond(use, estimate, lambda _: jnp.zeros_like(x_t), None)

    def loss(params, batch, key):
        t_key, noise_key, dropout_key = jax.random.split(key, 3)
        x0 = batch["label"] * 2.0 - 1.0
        if importance_sampling:  # the train step passes the bins' probabilities from the loss history
            t, t_bin, weights = importance.draw(t_key, batch["t_probabilities"], x0.shape[0], d.num_steps)
        else:
            t = process.sample_timesteps(t_key, x0.shape[0], d.num_steps, d.timestep_power)
            t_bin, weights = None, None

        def weighted_mean(values: jnp.ndarray) -> jnp.ndarray:
            """The mean over examples, each weighted by its importance weight."""
            return jnp.mean(values if weights is None else weights * values)

        noise = jax.random.normal(noise_key, x0.shape)
        x_t = process.q_sample(schedule, x0, t, noise)
        if d.get("recycling", ""):
            x_t, noise = recycled_x_t(params, batch, x0, t, noise, jax.random.fold_in(key, 1))
        x0_prev = own_estimate(params, batch, x_t, t, jax.random.fold_in(key, 2)) if self_condition else None
        raw, state = apply(
            {"params": params},
            mask_input(x_t, x0_prev),
            t,
            batch["image"],
            train=True,
            rngs={"dropout": dropout_key},
            mutable=["intermediates"],
        )
        terms = process.diffusion_losses(
            schedule,
            d.parameterization,
            x_t,
            t,
            link(raw),
            x0,
            noise,
            d.min_snr_gamma,
            config.loss.get("x0_clip", False),
        )
        noise_mse, x0_mse = weighted_mean(terms["noise_mse"]), weighted_mean(terms["x0_mse"])
        total = config.loss.noise_weight * noise_mse + config.loss.x0_weight * x0_mse
        metrics = {"noise_mse": noise_mse, "x0_mse": x0_mse}
        each = config.loss.noise_weight * terms["noise_mse"] + config.loss.x0_weight * terms["x0_mse"]
        if config.loss.seg_weight:
            label = batch["label"]
            logits = raw if bounded else 4.0 * terms["x0_hat"]
            prob = jax.nn.sigmoid(logits)
            bce_pixels = optax.sigmoid_binary_cross_entropy(logits, label)
            bce_each = jnp.mean(bce_pixels, axis=(1, 2, 3))
            bce = jnp.mean(bce_pixels) if weights is None else weighted_mean(bce_each)
            seg = soft_dice_loss(prob, label, weights) + bce
            total = total + config.loss.seg_weight * seg
            metrics["seg_loss"] = seg
            each = each + config.loss.seg_weight * (per_example_soft_dice_loss(prob, label) + bce_each)
        if importance_sampling:  # the train step records each example's loss in its bin's history
            metrics["per_example"] = {"bin": t_bin, "loss": each}
        if extra_loss is not None:
            extra, extra_metrics = extra_loss(state.get("intermediates", {}), batch, t)
            total = total + extra
            metrics.update(extra_metrics)
        return total, metrics

    def predict(params, images, key):
        variables = {"params": params}
        cond = apply(variables, images, method=model.encode_condition)
        batch = images.shape[0]

        def denoise(x_t, t, x0_prev=None):
            steps = jnp.full((batch,), t, jnp.int32)
            return link(apply(variables, mask_input(x_t, x0_prev), steps, cond, method=model.denoise))

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
            self_condition=self_condition,
            last=int(s.get("stepwise_last", 0)),
        )
        if s.fusion == "stepwise":
            return {"prob": out["prob"], "uncertainty": out["uncertainty"] * math.e}
        prob = ensemble.FUSIONS[s.fusion](out["chains"])
        return {"prob": prob, "uncertainty": binary_entropy(prob)}

    return Method(name, init, loss, predict)
