"""Fields every method's config shares (data, training, sampling, evaluation), per preset.

Presets: 'smoke' (seconds; tests), '' (default: the CPU demo on the embedded phantom data), 'paper'
(published settings, for a GPU/TPU). A method's config file starts from `base_config(preset)` and sets
its model; every field can be overridden on the command line (`--config.train.steps=200`).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

PRESETS = ("smoke", "", "paper")


def parse_preset(arg: str | None) -> str:
    preset = (arg or "").strip()
    if preset == "default":
        preset = ""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of smoke, default, paper")
    return preset


def unet_model_config(preset: str) -> ml_collections.ConfigDict:
    """The U-Net shape every segmentation method shares per preset (so rows compare at equal size)."""
    m = ml_collections.ConfigDict()
    m.base_features = 16
    m.multipliers = (1, 2, 4, 8)
    m.num_res_blocks = 1
    m.attention_levels = (3,)  # attention at 8x8 for 64 px: at 16x16 it doubled the step time
    m.dropout = 0.0
    m.dtype = "auto"  # compute dtype: auto = bfloat16 on GPU/TPU, float32 on CPU; params stay float32
    m.remat = False  # recompute ResBlock activations in the backward pass (memory for large images)
    if preset == "smoke":
        m.base_features = 8
        m.multipliers = (1, 2)
        m.attention_levels = (1,)
    elif preset == "paper":
        m.base_features = 64
        m.multipliers = (1, 1, 2, 2, 4, 4)
        m.num_res_blocks = 2
        m.attention_levels = (4, 5)
    return m


def add_diffusion(c: ml_collections.ConfigDict, preset: str) -> None:
    """The mask-diffusion fields shared by BTSegDiff and MedSegDiff (`methods/conditional_diffusion.py`).

    Default (CPU demo): x0-parameterised (converges far faster on a short budget; the noise term stays in
    the loss, min-SNR weighted) with the Dice + BCE auxiliary on the x0 estimate. Paper: eps-prediction,
    T = 1000 linear betas, no auxiliary, the full DDPM chain at sampling.
    """
    c.diffusion = d = ml_collections.ConfigDict()
    d.num_steps = 1000
    d.schedule = "linear"
    d.parameterization = "x0"
    d.min_snr_gamma = 5.0
    d.timestep_power = 1.0  # training t ~ T u^(1/power): 1 = uniform (the papers); > 1 favours high noise

    c.loss = lo = ml_collections.ConfigDict()
    lo.noise_weight = 1.0
    lo.x0_weight = 0.5
    lo.seg_weight = 1.0  # Dice + BCE on the x0 estimate (Diff-UNet); 0 in the paper presets
    if preset == "paper":
        d.parameterization = "eps"
        lo.seg_weight = 0.0
        c.sampling.method = "ddpm"


def base_config(preset: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = ""
    c.preset = preset or "default"
    c.seed = 0

    c.data = d = ml_collections.ConfigDict()
    d.root = config_dict.placeholder(str)  # a BraTS folder; None -> the embedded phantom dataset
    d.cache_dir = config_dict.placeholder(str)  # None -> $DIFFSEG_CACHE or ~/.cache/diffseg_jax
    d.phantom_cases = 60
    d.phantom_seed = 0
    d.phantom_spacing_mm = 2.0
    d.image_size = 64
    d.target = "regions"  # 'regions' (WT/TC/ET) or 'wt'
    d.slice_range = config_dict.placeholder(tuple)  # e.g. (80, 120); None -> tumour + healthy
    d.healthy_fraction = 1.0  # healthy slices per tumour slice when slice_range is None
    d.split_fractions = (0.7, 0.15, 0.15)
    d.split_seed = 0
    d.augment = True
    d.available = ""  # e.g. 't1,flair': the sequences the cases have (others may lack files; zero channels)

    c.train = t = ml_collections.ConfigDict()
    t.steps = 1600
    t.batch_size = 8
    t.optimizer = "adamw"  # 'adamw' or 'sgd' (Nesterov, train.momentum)
    t.momentum = 0.9
    t.adam_b1 = 0.9
    t.adam_b2 = 0.999
    t.learning_rate = 3e-4
    t.warmup_steps = 50
    t.weight_decay = 1e-4
    t.grad_clip = 1.0
    t.ema_decay = 0.999
    t.log_every = 50
    t.checkpoint_every = 400
    t.eval_every = 400
    t.val_max_slices = 64
    t.keep_checkpoints = 2
    t.sequence_dropout = 0.0  # fraction of examples that see a random subset of the sequences
    t.stop_after = 0  # >0: end this run after that many steps, with a checkpoint (the next run resumes)

    c.sampling = s = ml_collections.ConfigDict()
    s.method = "ddim"  # 'ddim' (num_steps) or 'ddpm' (the full chain)
    s.num_steps = 10
    s.num_samples = 3
    s.eta = 0.0
    s.fusion = "stepwise"  # diffusion methods: 'stepwise' (BTSegDiff's uncertainty) or 'mean' (ensemble)

    c.eval = e = ml_collections.ConfigDict()
    e.data_root = config_dict.placeholder(str)  # segment another folder (labels optional)
    e.output_dir = config_dict.placeholder(str)  # None -> <workdir>/eval
    e.split = "test"
    e.checkpoint = "best"  # 'best' (by validation Dice) or 'latest'
    e.batch_size = 16
    e.max_cases = 0  # 0 = all
    e.num_overlays = 3
    e.write_predictions = True
    e.available = ""  # e.g. 'flair': segment with only these sequences (the others zeroed); 'each': all 15
    e.fill_in_workdir = config_dict.placeholder(str)  # a trained M2DN: synthesise missing sequences first
    e.fill_in_config = "configs/m2dn.py"  # its config (':smoke' etc. as --config takes it)

    if preset == "smoke":
        d.phantom_cases = 6
        d.phantom_spacing_mm = 4.0
        d.image_size = 32
        d.healthy_fraction = 0.5
        t.steps = 6
        t.batch_size = 4
        t.warmup_steps = 1
        t.log_every = 2
        t.checkpoint_every = 3
        t.eval_every = 3
        t.val_max_slices = 8
        s.num_steps = 3
        s.num_samples = 2
        e.batch_size = 8
        e.num_overlays = 1
    elif preset == "paper":
        d.image_size = 256
        d.slice_range = (80, 120)
        t.steps = 100_000
        t.batch_size = 8
        t.learning_rate = 1e-4
        t.warmup_steps = 0
        t.weight_decay = 0.0
        t.ema_decay = 0.9999
        t.log_every = 100
        t.checkpoint_every = 5000
        t.eval_every = 5000
        t.val_max_slices = 256
    return c
