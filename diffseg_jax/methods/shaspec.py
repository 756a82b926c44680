"""ShaSpec: segment from any subset of the sequences (shared/specific encoders, mean-imputed shared features).

loss = BCE + soft Dice + dao_weight * L_dao + dco_weight * L_dco (paper: 0.1, 0.02). L_dao is the mean L1
between the deepest shared features of every pair of available sequences (the shared encoder should see the
same anatomy whatever the contrast); L_dco is the cross-entropy of a classifier telling the sequences apart
from their specific features (so those keep what is contrast-specific). Missing sequences are left out of
both. Random subsets come from the training loop (`train.sequence_dropout`, `modalities.drop_sequences`).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffseg_jax.config_defaults import ConfigError
from diffseg_jax.methods.base import Method, binary_entropy, model_apply, soft_dice_loss, unet_kwargs
from diffseg_jax.models.shaspec import ShaSpecUNet


def dao_loss(shared: jnp.ndarray, available: jnp.ndarray) -> jnp.ndarray:
    """Mean L1 between shared features [B,M,...] of every pair of available sequences; 0 without a pair."""
    pairs = list(itertools.combinations(range(shared.shape[1]), 2))
    i, j = (jnp.array(idx) for idx in zip(*pairs, strict=True))
    l1 = jnp.mean(jnp.abs(shared[:, i] - shared[:, j]), axis=tuple(range(2, shared.ndim)))  # [B,P]
    mask = (available[:, i] & available[:, j]).astype(l1.dtype)
    return jnp.sum(l1 * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def dco_loss(modality_logits: jnp.ndarray, available: jnp.ndarray) -> jnp.ndarray:
    """Cross-entropy of predicting sequence m from its specific features [B,M,M], available ones only."""
    labels = jnp.broadcast_to(jnp.arange(modality_logits.shape[1]), modality_logits.shape[:2])
    ce = optax.softmax_cross_entropy_with_integer_labels(modality_logits, labels)
    mask = available.astype(ce.dtype)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


FUSE_AT = ("bottom", "every_level")


def build(config: ml_collections.ConfigDict) -> Method:
    if config.model.get("fuse_at", "bottom") not in FUSE_AT:
        raise ConfigError(f"unknown model.fuse_at {config.model.fuse_at!r}; expected one of {FUSE_AT}")
    model = ShaSpecUNet(
        **unet_kwargs(config),
        encoder_features=config.model.get("encoder_features", 0),
        fuse_at=config.model.get("fuse_at", "bottom"),
    )
    apply = model_apply(model, config)
    dao_weight = config.loss.get("dao_weight", 0.1)
    dco_weight = config.loss.get("dco_weight", 0.02)

    def init(key, batch):
        return model.init(key, batch["image"])["params"]

    def loss(params, batch, key):
        logits, aux = apply(
            {"params": params}, batch["image"], train=True, return_aux=True, rngs={"dropout": key}
        )
        bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch["label"]))
        seg = bce + soft_dice_loss(jax.nn.sigmoid(logits), batch["label"])
        dao = dao_loss(aux["shared"], aux["available"])
        dco = dco_loss(aux["modality_logits"], aux["available"])
        return seg + dao_weight * dao + dco_weight * dco, {"seg": seg, "dao": dao, "dco": dco}

    def predict(params, images, key):
        del key  # deterministic
        prob = jax.nn.sigmoid(apply({"params": params}, images))
        return {"prob": prob, "uncertainty": binary_entropy(prob)}

    return Method("shaspec", init, loss, predict)
