"""MedSegDiff-V1: condition encoder fused into the denoiser by dynamic conditional encoding + FF-Parser.

Presets (`--config=configs/medsegdiff_v1.py:smoke`, default, `:real`, `:paper`):
- smoke: 32 px, a tiny net, 6 steps; for tests.
- default: the CPU demo, the same data, net size, step budget and diffusion settings as BTSegDiff's
  default (so the comparison rows differ only in the method), sampled as MedSegDiff does: an ensemble
  of 5 chains fused by the mean (DDIM 10 steps each).
- real: the shared real-BraTS preset (128 px over the brain's crop, five levels, real-data augmentation,
  1600 steps at 6e-4; `config_defaults.base_config`), sampled with DDIM 4 steps x 3 samples.
- paper: MedSegDiff's public recipe (its README and train script): 256 px, T = 1000 linear betas,
  eps-prediction, AdamW lr 1e-4, batch 8, EMA 0.9999, ~100k steps; 1000 ancestral DDPM steps x 5
  samples fused by the mean.
Dynamic conditional encoding (and its FF-Parser) at `model.dce_levels`: 'middle' (the paper's middle two
stages) in `paper`, 'all' levels in the CPU demo and smoke presets, or indices such as '1,2'.
Ablation: `--config.model.ff_parser=False` removes the FF-Parser.
"""

from diffseg_jax.config_defaults import add_diffusion, base_config, parse_preset, unet_model_config


def get_config(arg: str | None = None):
    preset = parse_preset(arg)
    c = base_config(preset)
    c.method = "medsegdiff_v1"
    c.model = unet_model_config(preset)
    c.model.ff_parser = True
    c.model.dce_levels = "middle" if preset == "paper" else "all"
    add_diffusion(c, preset)
    c.sampling.fusion = "mean"
    if preset in ("", "paper"):
        c.sampling.num_samples = 5
    if preset == "paper":
        c.loss.x0_weight = 0.0  # MedSegDiff's loss is the noise MSE
    return c
