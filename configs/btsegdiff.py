"""BTSegDiff: multimodal dynamic conditional guidance + Fourier feature fusion + stepwise uncertainty.

Presets (`--config=configs/btsegdiff.py:smoke`, default, `:real`, `:paper`):
- smoke: 32 px, a tiny net, 6 steps; for tests.
- default: the CPU demo, 64 px on the embedded phantom data, x0-parameterised (converges far faster on a
  short budget; the loss still has both terms, the noise term min-SNR weighted), training steps drawn
  towards high noise (`diffusion.timestep_power = 2`), DDIM 10 steps x 3 samples.
- real: the default's diffusion on real BraTS scans: 128 px, five levels, real-data augmentation, 1600
  steps at 6e-4, DDIM 4 steps x 3 samples (`config_defaults.base_config`); half of the training examples
  see a random subset of the sequences (`train.sequence_dropout = 0.5`: WT +0.05, TC +0.06 Dice over three
  folds of real cases, docs/results.md), which also lets it segment cases that lack sequences.
- paper: the BTSegDiff paper's diffusion (T = 1000, linear betas, eps-prediction, loss = noise MSE +
  1/2 x0 MSE, S = 3) with MedSegDiff's training recipe that BTSegDiff's code inherits (AdamW 1e-4,
  batch 8, EMA 0.9999, 100k steps), axial slices 80-120 at 256 px (BraTS 240 px padded).
"""

from diffseg_jax.config_defaults import add_diffusion, base_config, parse_preset, unet_model_config


def get_config(arg: str | None = None):
    preset = parse_preset(arg)
    c = base_config(preset)
    c.method = "btsegdiff"
    c.model = unet_model_config(preset)
    c.model.fourier_fusion = True
    add_diffusion(c, preset)
    if preset in ("", "real"):
        # Train more often at high noise, where only the image can answer (t = T u^(1/2), 75% in the
        # upper half): higher test Dice than uniform t (docs/results.md). The paper preset keeps uniform t.
        c.diffusion.timestep_power = 2.0
    if preset == "real":
        c.train.sequence_dropout = 0.5
    return c
