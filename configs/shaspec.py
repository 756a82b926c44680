"""ShaSpec: segment from any subset of the four sequences (shared + specific encoders, CVPR 2023).

Presets (`--config=configs/shaspec.py:smoke`, default, `:real`, `:paper`) share the U-Net shape and data of
configs/unet_baseline.py, so rows compare at (nearly) equal size. Half of the training examples
(`train.sequence_dropout` = 0.5) see a random non-empty proper subset of the sequences, the other half all
four: the model must learn every subset without losing the full-input accuracy. Loss weights are the
paper's (dao 0.1, dco 0.02). Paper: SGD 1e-2 with Nesterov momentum 0.99 (and the shared 256 px recipe).
Evaluate on a subset with `--config.eval.available=t1,flair`.
"""

import ml_collections

from diffseg_jax.config_defaults import base_config, parse_preset, unet_model_config


def get_config(arg: str | None = None):
    preset = parse_preset(arg)
    c = base_config(preset)
    c.method = "shaspec"
    c.model = unet_model_config(preset)
    c.model.encoder_features = 0  # level-0 width of the shared and specific encoders; 0 -> base_features // 2
    # 'bottom': shared and specific features fused once before the decoder, a missing sequence's feature the
    # mean of the available shared ones (the paper); 'every_level': fused at every level
    c.model.fuse_at = "bottom"

    c.loss = lo = ml_collections.ConfigDict()
    lo.dao_weight = 0.1  # L1 between the shared features of available sequence pairs
    lo.dco_weight = 0.02  # cross-entropy of the sequence classifier on the specific features

    c.train.sequence_dropout = 0.5
    if preset == "paper":
        c.train.optimizer = "sgd"
        c.train.learning_rate = 1e-2
        c.train.momentum = 0.99
    return c
