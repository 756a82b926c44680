"""MedSegDiff-V2: anchor condition with uncertain spatial attention + SS-Former with the NBP filter.

Presets (`--config=configs/medsegdiff_v2.py:smoke`, default, `:real`, `:paper`):
- smoke: 32 px, a tiny net, 6 steps; for tests.
- default: the CPU demo, as configs/medsegdiff_v1.py (BTSegDiff's data, net size, budget and diffusion
  settings; ensemble of 5 DDIM-10 chains fused by the mean), plus the condition model's Dice + CE loss at
  every step (alpha = 1: with ~1600 steps there is no budget to skip).
- real: the shared real-BraTS preset (128 px over the brain's crop, five levels, real-data augmentation,
  6e-4; `config_defaults.base_config`), sampled with DDIM 4 steps x 3 samples; 1300 steps, not 1600: two
  U-Nets (condition and denoiser) take ~1.17 s a step on a 2-core CPU, and 1300 steps keep its training
  within the preset's 30 minutes (docs/results.md, "Real BraTS").
- paper: the V2 paper (AAAI 2024): 256 px, AdamW lr 1e-4, batch 32, T = 1000 linear betas, eps-prediction,
  loss L_noise + [t = 0 mod alpha](L_dice + beta L_ce); alpha and beta are not given numerically in the
  paper, we use alpha = 5, beta = 10 (MedSegDiff's public code weights its condition branch by 10);
  1000 DDPM steps x 5 samples fused by the mean.
Ablation rows of the paper's Table (brain tumour Dice: SA 88.2, U-SA 89.4, +SS-Former 89.8, +NBP 90.8):
  SA:          --config.model.anchor=plain --config.model.ss_former=False
  U-SA:        --config.model.ss_former=False
  +SS-Former:  --config.model.nbp_filter=False
  +NBP filter: (the default)
"""

from diffseg_jax.config_defaults import add_diffusion, base_config, parse_preset, unet_model_config


def get_config(arg: str | None = None):
    preset = parse_preset(arg)
    c = base_config(preset)
    c.method = "medsegdiff_v2"
    c.model = m = unet_model_config(preset)
    m.anchor = "uncertain"  # 'uncertain' (U-SA), 'plain' (SA) or 'none'
    m.ss_former = True
    m.nbp_filter = True
    m.ss_former_blocks = 1
    add_diffusion(c, preset)
    c.loss.condition_every = 1  # alpha
    c.loss.condition_ce_weight = 1.0  # beta
    c.sampling.fusion = "mean"
    if preset in ("", "paper"):
        c.sampling.num_samples = 5
    if preset == "real":
        c.train.steps = 1300
    if preset == "paper":
        c.train.batch_size = 32
        c.loss.x0_weight = 0.0
        c.loss.condition_every = 5
        c.loss.condition_ce_weight = 10.0
    return c
