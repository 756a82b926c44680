"""Deterministic U-Net trained with BCE + soft Dice: the baseline every diffusion model must beat."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffseg_jax.methods.base import Method, binary_entropy, model_apply, soft_dice_loss, unet_kwargs
from diffseg_jax.models.unet import UNet


def build(config: ml_collections.ConfigDict) -> Method:
    model = UNet(**unet_kwargs(config))
    apply = model_apply(model, config)

    def init(key, batch):
        return model.init(key, batch["image"])["params"]

    def loss(params, batch, key):
        logits = apply({"params": params}, batch["image"], train=True, rngs={"dropout": key})
        bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch["label"]))
        dice = soft_dice_loss(jax.nn.sigmoid(logits), batch["label"])
        return bce + dice, {"bce": bce, "soft_dice_loss": dice}

    def predict(params, images, key):
        del key  # deterministic
        prob = jax.nn.sigmoid(apply({"params": params}, images))
        return {"prob": prob, "uncertainty": binary_entropy(prob)}

    return Method("unet_baseline", init, loss, predict)
