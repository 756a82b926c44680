"""M2DN: synthesise the missing MRI sequences with a diffusion model over the missing channels only.

Presets (`--config=configs/m2dn.py:smoke`, default, `:real`, `:paper`):
- smoke: 32 px, a tiny net, 6 steps, DDIM 3 steps; for tests.
- default: the CPU demo, 64 px on the embedded phantom data, DDIM 10 steps.
- real: the shared real-BraTS preset (128 px over the brain's crop, five levels, real-data augmentation,
  1600 steps at 6e-4; `config_defaults.base_config`).
- paper: T = 1000 linear betas, x0-prediction, MSE on all sequences, the full 1000-step DDPM chain at
  sampling (our reading: the paper does not state its sampler), the shared GPU recipe
  (AdamW 1e-4, batch 8, EMA 0.9999, 100k steps) and axial slices 80-120 at 256 px.
Task 'synthesis': validation tracks the mean PSNR of each sequence synthesised from the other three; run_eval
scores all 14 availability patterns (PSNR, SSIM, MAE) and writes NIfTI (`diffseg_jax/tasks/synthesis.py`).
"""

import ml_collections

from diffseg_jax.config_defaults import base_config, parse_preset, unet_model_config


def get_config(arg: str | None = None):
    preset = parse_preset(arg)
    c = base_config(preset)
    c.method = "m2dn"
    c.task = "synthesis"
    c.model = unet_model_config(preset)
    c.model.stem_features = 0  # per-sequence encoder width; 0 -> base_features // 2

    c.diffusion = d = ml_collections.ConfigDict()
    d.num_steps = 1000
    d.schedule = "linear"
    d.parameterization = "x0"  # the paper predicts M (x0) directly; the only one m2dn accepts
    d.timestep_power = 1.0
    d.x0_clip = 5.0  # images are z-scores clipped at +-5 (data_pipelines/slices.py `_CLIP`)

    c.sampling.num_samples = 1  # one synthesis per input (unused by m2dn; kept for the shared fields)
    if preset == "paper":
        c.sampling.method = "ddpm"
    return c
