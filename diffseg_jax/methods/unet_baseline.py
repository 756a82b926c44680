"""U-Net trained with BCE + soft Dice: the baseline every diffusion model must beat (deterministic, or MC
dropout at evaluation with `eval.mc_dropout`)."""

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

    passes = config.eval.get("mc_dropout", 0)
    if passes and not config.model.dropout:
        raise ValueError("eval.mc_dropout needs a U-Net trained with model.dropout > 0")

    def predict(params, images, key):
        if not passes:  # deterministic: the key is unused
            prob = jax.nn.sigmoid(apply({"params": params}, images))
        else:  # MC dropout: the mean over passes with dropout active, each with its own key

            def one_pass(pass_key):
                logits = apply({"params": params}, images, train=True, rngs={"dropout": pass_key})
                return jax.nn.sigmoid(logits)

            prob = jnp.mean(jax.lax.map(one_pass, jax.random.split(key, passes)), axis=0)
        return {"prob": prob, "uncertainty": binary_entropy(prob)}

    return Method("unet_baseline", init, loss, predict)
