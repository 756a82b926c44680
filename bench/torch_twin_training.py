"""The PyTorch twins' training (bench/torch_twins.py): the two losses and a train step that does the JAX
step's work (`diffseg_jax/train.py`): AdamW with the warmup-cosine rate, global-norm clipping, the warmed-up
EMA and the finiteness check.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffseg_jax.diffusion.schedules import make_schedule

Batch = dict[str, torch.Tensor]
LossFn = Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


# ------------------------------------------------------------------------------------------------ losses


def soft_dice_loss(prob: torch.Tensor, label: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per channel over batch and pixels, averaged over channels (`methods.base`)."""
    inter = torch.sum(prob * label, dim=(0, 2, 3))
    denom = torch.sum(prob, dim=(0, 2, 3)) + torch.sum(label, dim=(0, 2, 3))
    return 1.0 - torch.mean((2.0 * inter + eps) / (denom + eps))


def unet_baseline_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BCE + soft Dice of the logits (`methods/unet_baseline.py`)."""
    logits = model(batch["image"])
    bce = F.binary_cross_entropy_with_logits(logits, batch["label"])
    dice = soft_dice_loss(torch.sigmoid(logits), batch["label"])
    return bce + dice, {"bce": bce, "soft_dice_loss": dice}


class DiffusionLoss:
    """`conditional_diffusion.loss` without recycling: noise MSE (min-SNR weighted under x0-prediction),
    x0 MSE (optionally on the clipped estimate) and seg_weight x (soft Dice + BCE) of the x0 estimate."""

    def __init__(self, model: nn.Module, config: ml_collections.ConfigDict):
        d, lo = config.diffusion, config.loss
        if d.get("recycling", ""):
            raise ValueError("diffusion.recycling has no twin here; benchmark with it off")
        if d.parameterization not in ("x0", "eps"):
            raise ValueError(f"unknown parameterization {d.parameterization!r}")
        schedule = make_schedule(d.schedule, d.num_steps)
        alphas_cumprod = torch.from_numpy(np.array(schedule.alphas_cumprod))  # float32, as JAX computes
        self.sqrt_ab = torch.sqrt(alphas_cumprod)
        self.sqrt_one_minus_ab = torch.sqrt(1.0 - alphas_cumprod)
        self.snr = alphas_cumprod / (1.0 - alphas_cumprod)
        self.model, self.d, self.lo = model, d, lo

    def sample(self, batch_size: int, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        """Training steps t (T u^(1/power), or uniform) and the noise."""
        steps, power = self.d.num_steps, self.d.timestep_power
        if power == 1.0:
            t = torch.randint(0, steps, (batch_size,))
        else:
            t = torch.clamp((steps * torch.rand(batch_size) ** (1.0 / power)).long(), max=steps - 1)
        return t, torch.randn(shape)

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t, noise = self.sample(batch["label"].shape[0], batch["label"].shape)
        return self.terms(batch, t, noise)

    def terms(
        self, batch: Batch, t: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss at given steps and noise (the test feeds JAX's draws)."""
        label = batch["label"]
        x0 = label * 2.0 - 1.0
        a, s = self.sqrt_ab[t][:, None, None, None], self.sqrt_one_minus_ab[t][:, None, None, None]
        x_t = a * x0 + s * noise
        raw = self.model(x_t, t, batch["image"])
        bounded = self.d.parameterization == "x0"
        if bounded:  # raw are the mask's logits
            x0_hat = 2.0 * torch.sigmoid(raw) - 1.0
            eps_hat = (x_t - a * x0_hat) / s
        else:
            eps_hat, x0_hat = raw, (x_t - s * raw) / a
        noise_mse = torch.mean((eps_hat - noise) ** 2, dim=(1, 2, 3))
        if bounded:
            noise_mse = noise_mse * torch.clamp(self.d.min_snr_gamma / self.snr[t], max=1.0)
        x0_for_loss = torch.clamp(x0_hat, -1.0, 1.0) if self.lo.get("x0_clip", False) else x0_hat
        noise_mse, x0_mse = noise_mse.mean(), torch.mean((x0_for_loss - x0) ** 2)
        total = self.lo.noise_weight * noise_mse + self.lo.x0_weight * x0_mse
        metrics = {"noise_mse": noise_mse, "x0_mse": x0_mse}
        if self.lo.seg_weight:
            logits = raw if bounded else 4.0 * x0_hat
            bce = F.binary_cross_entropy_with_logits(logits, label)
            seg = soft_dice_loss(torch.sigmoid(logits), label) + bce
            total = total + self.lo.seg_weight * seg
            metrics["seg_loss"] = seg
        return total, metrics


def build_loss(config: ml_collections.ConfigDict, model: nn.Module) -> LossFn:
    """`batch -> (loss, metrics)` of `config.method`, batch in NCHW."""
    if config.method == "unet_baseline":
        return lambda batch: unet_baseline_loss(model, batch)
    if config.method == "btsegdiff":
        return DiffusionLoss(model, config)
    raise ValueError(f"no PyTorch loss for method {config.method!r}")


# -------------------------------------------------------------------------------------------- training


def learning_rate(config: ml_collections.ConfigDict, step: int) -> float:
    """`train_state.learning_rate_schedule`: linear warmup from 0, cosine decay to 5% at train.steps."""
    t = config.train
    warmup = min(t.warmup_steps, max(t.steps - 1, 1))
    total, peak, end = max(t.steps, 2), t.learning_rate, 0.05 * t.learning_rate
    if step < warmup:
        return peak * step / warmup
    progress = min(step - warmup, total - warmup) / max(total - warmup, 1)
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


class TorchTrainer:
    """The JAX train step's work per step: loss and gradients, global-norm clipping, AdamW at the
    scheduled rate, the EMA with decay min(max, (1 + step) / (10 + step)) and the finiteness check.

    A non-finite step raises instead of keeping the previous state (a benchmark has no use for it).
    `loss_fn` may be a `torch.compile`d form of the model's loss; `fused` picks AdamW's fused kernel.
    """

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, config: ml_collections.ConfigDict, fused: bool = False
    ):
        t = config.train
        if t.optimizer != "adamw":
            raise ValueError(f"train.optimizer {t.optimizer!r} has no twin here; expected adamw")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=0.0,
            betas=(t.adam_b1, t.adam_b2),
            eps=1e-8,  # optax's default
            weight_decay=t.weight_decay,
            **({"fused": True} if fused else {"foreach": True}),
        )
        self.ema = [p.detach().clone() for p in self.params]
        self.loss_fn, self.config, self.step_count = loss_fn, config, 0

    def step(self, batch: Batch) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        loss, metrics = self.loss_fn(batch)
        loss.backward()
        with torch.no_grad():
            grad_norm = nn.utils.clip_grad_norm_(self.params, self.config.train.grad_clip, foreach=True)
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.config, self.step_count)
            self.optimizer.step()
            decay = min(self.config.train.ema_decay, (1.0 + self.step_count) / (10.0 + self.step_count))
            torch._foreach_lerp_(self.ema, self.params, 1.0 - decay)
            param_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(self.params)))
            finite = torch.isfinite(loss) & torch.isfinite(grad_norm) & torch.isfinite(param_norm)
        if not bool(finite):
            raise FloatingPointError(
                f"step {self.step_count}: loss {float(loss)}, gradient norm {float(grad_norm)}"
            )
        self.step_count += 1
        metrics = {"loss": loss, "grad_norm": grad_norm, **metrics}
        return {k: float(v.detach()) for k, v in metrics.items()}
